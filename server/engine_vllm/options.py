"""How the vLLM engine is started: its parallelism, placement and the engine arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

EXECUTOR_BACKENDS = ("auto", "uni", "mp", "ray", "external_launcher")
# On a CPU-only machine vLLM's KV cache takes this many GiB of host memory unless
# VLLM_CPU_KVCACHE_SPACE says otherwise (vLLM's own default is far larger).
CPU_KV_CACHE_GIB = "1"


@dataclass(frozen=True)
class VllmOptions:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "auto"  # vLLM picks: uni for one device, else mp/ray
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.85  # leaves room for the SAE on the first GPU
    max_model_len: int | None = None
    seed: int = 0

    def engine_arguments(self, model: str) -> dict[str, Any]:
        """AsyncEngineArgs keywords. Raw logits as the logprobs (compute-logits reads them, over
        the whole vocabulary); vllm-lens forces eager mode itself so its hooks fire."""
        backend = self.distributed_executor_backend
        return {
            "model": model,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "distributed_executor_backend": None if backend == "auto" else backend,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "seed": self.seed,
            "logprobs_mode": "raw_logits",
            "max_logprobs": -1,
        }


def prepare_environment(on_gpu: bool) -> None:
    """Environment vLLM reads at start-up: a modest KV cache on a CPU-only machine."""
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
