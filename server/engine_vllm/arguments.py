"""`ember-bot serve`'s engine options: --engine, and vLLM's parallelism passed through."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from typing import Any

from server.engine.interface import Engine
from server.engine_vllm.options import EXECUTOR_BACKENDS, VllmOptions
from server.model.presets import ModelBundle

ENGINES = ("transformers", "vllm")

# Builds the bundle: (model, sae, layer, labels, **options), and (preset, labels=, **options).
Loaders = tuple[Callable[..., ModelBundle], Callable[..., ModelBundle]]


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "engine (vLLM: pip install 'ember-bot[vllm]'; see the README's 'Serving on vLLM')"
    )
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="transformers",
        help="transformers: our own batching over Hugging Face transformers; vllm: vLLM's "
        "continuous batching with vllm-lens steering (default: %(default)s)",
    )
    group.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model replica"
    )
    group.add_argument(
        "--pipeline-parallel-size", type=int, default=1, help="vllm: pipeline stages (nodes)"
    )
    group.add_argument(
        "--distributed-executor-backend",
        choices=EXECUTOR_BACKENDS,
        default="auto",
        help="vllm: uni (one process), mp (one node), ray (several nodes) (default: %(default)s)",
    )
    group.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=VllmOptions.gpu_memory_utilization,
        help="vllm: share of each GPU's memory vLLM may take; the SAE needs the rest of the "
        "first (default: %(default)s)",
    )
    group.add_argument("--max-model-len", type=int, help="vllm: longest context served")


def engine_problem(args: argparse.Namespace) -> str | None:
    """Options that contradict the chosen engine, or a missing vLLM, in one line; None when
    serving may go ahead."""
    if args.engine != "vllm":
        vllm_only = args.tensor_parallel_size != 1 or args.pipeline_parallel_size != 1
        return (
            "--tensor-parallel-size and --pipeline-parallel-size need --engine vllm"
            if (vllm_only)
            else None
        )
    if args.device_map != "none" or args.quantize != "none":
        return (
            "--engine vllm places and shards the model itself: drop --device-map and "
            "--quantize, use --tensor-parallel-size / --pipeline-parallel-size"
        )
    missing = [name for name in ("vllm", "vllm_lens") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"--engine vllm needs {' and '.join(missing)}: pip install 'ember-bot[vllm]' "
            "(Python 3.12, a CUDA machine; see the README's 'Serving on vLLM')"
        )
    return None


def loaders(args: argparse.Namespace) -> Loaders | None:
    """The vLLM engine's bundle loaders (weightless), or None for the transformers engine."""
    if args.engine != "vllm":
        return None
    from server.engine_vllm.loading import (
        load_bundle_without_weights,
        load_preset_without_weights,
    )

    return load_bundle_without_weights, load_preset_without_weights


def build_engine(args: argparse.Namespace, bundle: ModelBundle) -> Engine | None:
    """The engine to serve `bundle` with; None: the transformers Runtime (create_app's)."""
    if args.engine != "vllm":
        return None
    from server.engine_vllm.engine import VllmEngine
    from server.engine_vllm.loading import model_source

    options: dict[str, Any] = {
        "tensor_parallel_size": args.tensor_parallel_size,
        "pipeline_parallel_size": args.pipeline_parallel_size,
        "distributed_executor_backend": args.distributed_executor_backend,
        # auto: the checkpoint's dtype on GPUs, float32 on the CPU (as the transformers engine)
        "dtype": "float32" if args.dtype == "auto" and not _has_gpu() else args.dtype,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
    }
    return VllmEngine(bundle, model_source(bundle), VllmOptions(**options))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
