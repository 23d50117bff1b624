"""What the fake Hub and exports site serve: real file layouts with tiny contents.

- Models: random-weight Gemma 3 (text) and Llama checkpoints with the real architectures and a
  few dozen thousand parameters, written by `save_pretrained` (config.json,
  generation_config.json, model.safetensors) with the tiny preset's tokenizer and its Llama-3-style
  chat template (tokenizer.json, tokenizer_config.json, chat_template.jinja).
- SAEs: Gemma Scope 2 (`resid_post/layer_N_width_16k_l0_medium/params.safetensors` with lowercase
  w_enc [d_in, d_sae], w_dec, b_enc, b_dec, threshold, and config.json) and Goodfire `.pth`.
- Labels: Neuronpedia explanation exports,
  `/v1/<model id>/<source id>/explanations/batch-N.jsonl.gz`.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from server.model.tiny.tokenizer import build_tokenizer
from tests.support.sae_formats import Weights, write_gemma_scope_2, write_goodfire

HIDDEN = 64


def _saved(model: PreTrainedModel) -> dict[str, bytes]:
    tokenizer = build_tokenizer()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return files_in(Path(folder))


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its posix path relative to it."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _sizes(layers: int, vocabulary: int) -> dict[str, int]:
    return {
        "vocab_size": vocabulary,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": HIDDEN // 2,
        "max_position_embeddings": 1024,
    }


def tiny_gemma3(layers: int) -> dict[str, bytes]:
    """A Gemma3ForCausalLM checkpoint (model_type gemma3_text, like gemma-3-270m-it)."""
    tokenizer = build_tokenizer()
    config = Gemma3TextConfig(
        **_sizes(layers, len(tokenizer)),
        sliding_window=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _saved(Gemma3ForCausalLM(config))


def tiny_llama(layers: int) -> dict[str, bytes]:
    """A LlamaForCausalLM checkpoint (like Llama-3.1-8B-Instruct)."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        **_sizes(layers, len(tokenizer)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _saved(LlamaForCausalLM(config))


def gemma_scope_2(layer: int, d_sae: int) -> dict[str, bytes]:
    """Gemma Scope 2's files for one residual SAE, by path in its repo."""
    folder = f"resid_post/layer_{layer}_width_16k_l0_medium"
    config = {
        "architecture": "jump_relu",
        "hf_hook_point_in": f"model.layers.{layer}.output",
        "width": d_sae,
    }
    with tempfile.TemporaryDirectory() as root:
        write_gemma_scope_2(Path(root) / folder, Weights.random(HIDDEN, d_sae), config)
        return files_in(Path(root))


def goodfire(path: str, d_sae: int) -> dict[str, bytes]:
    """A Goodfire SAE state dict at `path` in its repo."""
    with tempfile.TemporaryDirectory() as root:
        write_goodfire(Path(root) / path, Weights.random(HIDDEN, d_sae))
        return files_in(Path(root))


def explanation_batches(
    np_model: str, np_source: str, labels: dict[int, str], batches: int
) -> dict[str, bytes]:
    """Neuronpedia's export of `labels`, split over `batches` files, by URL path."""
    records = [
        {
            "modelId": np_model,
            "layer": np_source,
            "index": str(index),
            "description": label,
            "explanationModelName": "gpt-4o-mini",
            "typeName": "oai_token-act-pair",
        }
        for index, label in sorted(labels.items())
    ]
    size = -(-len(records) // batches)
    files = {}
    for number in range(batches):
        lines = "".join(json.dumps(record) + "\n" for record in records[number * size :][:size])
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as stream:
            stream.write(lines.encode())
        path = f"/v1/{np_model}/{np_source}/explanations/batch-{number}.jsonl.gz"
        files[path] = buffer.getvalue()
    return files
