"""How much memory a model + SAE pair needs, from the model's config.json alone, and how much is
free where it is going: printed before loading, so what cannot fit is refused in one line
instead of failing minutes later (or swapping the machine to a halt).

The parameter count is that of a dense decoder with a gated MLP (Llama, Gemma, Qwen, Mistral):
embedding, attention with grouped-query K/V heads, MLP, norms, and the LM head unless it is tied
to the embedding. Quantisation (bitsandbytes) shrinks the decoder layers' linear weights only;
embedding, LM head and norms stay in the model's dtype, as bitsandbytes leaves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3
# The KV-cache allowance: 8 concurrent conversations (the bot's default backend concurrency)
# of 2,048 tokens each.
KV_CACHE_TOKENS = 8 * 2048
# Bytes per quantised weight: int8; NF4 plus one float32 scale per block of 64 weights.
QUANTIZED_BYTES = {"8bit": 1.0, "4bit": 0.5 + 4 / 64}
# Families with four norms per decoder layer (before and after attention and MLP), and those
# with a norm over each query and key head.
FOUR_NORMS = ("gemma2", "gemma3")
QK_NORMS = ("gemma3", "qwen3")
QKV_BIAS = ("qwen2",)


@dataclass(frozen=True)
class ParameterCount:
    embedding: int
    linear: int  # the decoder layers' attention and MLP weights: what quantisation shrinks
    other: int  # norms and biases
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.linear + self.other + self.lm_head


@dataclass(frozen=True)
class MemoryEstimate:
    model: float  # bytes
    sae: float
    cache: float

    @property
    def total(self) -> float:
        return self.model + self.sae + self.cache

    def describe(self) -> str:
        return (
            f"Needs about {gib(self.total)} GiB (model {gib(self.model)} + SAE {gib(self.sae)} "
            f"+ cache {gib(self.cache)})"
        )


@dataclass(frozen=True)
class FreeMemory:
    bytes: int | None  # None: unknown on this platform
    where: str  # "cuda:0", "2 GPUs (cuda:0, cuda:1)", "host RAM"

    def describe(self) -> str:
        if self.bytes is None:
            return f"free memory on {self.where} unknown"
        return f"{gib(self.bytes)} GiB free on {self.where}"


def gib(size: float) -> str:
    """Bytes in GiB, to 0.1 GiB (0.01 below 1 GiB)."""
    return f"{size / GIB:,.1f}" if size >= GIB else f"{size / GIB:.2f}"


def text_config(config: Any) -> Any:
    """The language model's part of `config` (multimodal configs nest it as text_config)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def count_parameters(config: Any) -> ParameterCount:
    text = text_config(config)
    family = str(getattr(text, "model_type", ""))
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    query, key_value = heads * head_dim, kv_heads * head_dim
    attention = hidden * query + 2 * hidden * key_value + query * hidden
    mlp = 3 * hidden * text.intermediate_size
    norms = (4 if family.startswith(FOUR_NORMS) else 2) * hidden
    norms += 2 * head_dim if family.startswith(QK_NORMS) else 0
    biases = 0
    if getattr(text, "attention_bias", False):
        biases += query + 2 * key_value + hidden
    elif family in QKV_BIAS:
        biases += query + 2 * key_value
    if getattr(text, "mlp_bias", False):
        biases += 2 * text.intermediate_size + hidden
    tied = bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
    return ParameterCount(
        embedding=vocab * hidden,
        linear=layers * (attention + mlp),
        other=layers * (norms + biases) + hidden,  # the final norm
        lm_head=0 if tied else vocab * hidden,
    )


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def estimate_memory(
    config: Any,
    *,
    dtype: torch.dtype,
    quantize: str = "none",
    sae_shape: tuple[int, int] | None = None,
    sae_dtype: torch.dtype | None = None,
    cache_tokens: int = KV_CACHE_TOKENS,
) -> MemoryEstimate:
    """Bytes for the weights (in `dtype`, decoder linears `quantize`d), the SAE (`sae_shape` =
    (d_in, d_sae): encoder, decoder and both biases) and a KV cache of `cache_tokens`."""
    count = count_parameters(config)
    width = dtype_bytes(dtype)
    linear = QUANTIZED_BYTES.get(quantize, width)
    model = count.linear * linear + (count.embedding + count.other + count.lm_head) * width
    sae = 0
    if sae_shape is not None:
        d_in, d_sae = sae_shape
        sae = (2 * d_in * d_sae + d_sae + d_in) * dtype_bytes(sae_dtype or dtype)
    text = text_config(config)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    cache = 2 * text.num_hidden_layers * kv_heads * head_dim * width * cache_tokens
    return MemoryEstimate(model=model, sae=sae, cache=cache)


def free_memory(device: str, *, across_gpus: bool = False) -> FreeMemory:
    """Free memory where the model goes: one GPU, every visible GPU (`across_gpus`, as
    device_map="auto" uses them), or host RAM for the CPU (and Apple's unified memory)."""
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        if across_gpus:
            indices = list(range(torch.cuda.device_count()))
        else:
            index = torch.device(device).index
            indices = [torch.cuda.current_device() if index is None else index]
        free = sum(torch.cuda.mem_get_info(index)[0] for index in indices)
        names = ", ".join(f"cuda:{index}" for index in indices)
        return FreeMemory(free, names if len(indices) == 1 else f"{len(indices)} GPUs ({names})")
    return FreeMemory(host_available_memory(), "host RAM")


def host_available_memory() -> int | None:
    """Available host RAM in bytes: psutil if installed, else /proc/meminfo, else None."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
    return int(match.group(1)) * 1024 if match else None
