"""Loading big models: the memory estimate from config.json (checked on the real configs of
Llama 3.3 70B, Llama 3.1 8B and Gemma 3 270M), the refusal when it cannot fit, device maps,
quantisation (refused cleanly where it cannot run), frozen parameters and the SAE's device."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from fastapi.testclient import TestClient

from bench.real_size import LLAMA_3_1_8B
from server import cli
from server.api.app import API_PREFIX, create_app
from server.model import loading
from server.model.loading import (
    NotEnoughMemory,
    layer_device,
    load_bundle,
    placement,
    placement_device,
)
from server.model.memory import (
    GIB,
    FreeMemory,
    count_parameters,
    estimate_memory,
    free_memory,
    host_available_memory,
)
from server.model.presets import ModelBundle
from tests.support.sae_formats import Weights, write_gemma_scope

# meta-llama/Llama-3.3-70B-Instruct's config.json differs from Llama 3.1 8B Instruct's (kept once,
# in the GPU benchmark that builds a model from it) only in these sizes.
LLAMA_3_3_70B = {
    **LLAMA_3_1_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "transformers_version": "4.47.0.dev0",
}
GEMMA_3_270M_IT = {  # google/gemma-3-270m-it: no tie_word_embeddings key (Gemma ties by default)
    "_sliding_window_pattern": 6,
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": [1, 106],
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 18,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 512,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.55.0.dev0",
    "use_bidirectional_attention": False,
    "use_cache": True,
    "vocab_size": 262144,
}
SMALL = {"hidden_size": 64, "intermediate_size": 96, "vocab_size": 300}  # and 3 layers, GQA 4:2
SMALL |= {"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}
GOODFIRE_SAE = (8192, 65536)  # (d_in, d_sae) of Goodfire's Llama 3.3 70B SAE


def config_from(tmp_path: Path, fields: dict[str, Any]) -> transformers.PretrainedConfig:
    """The config transformers reads from a config.json with exactly these fields."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return transformers.AutoConfig.from_pretrained(folder)


# ---- the estimate -------------------------------------------------------------------------------


def test_llama_3_3_70b_needs_about_131_gib_of_bf16_weights(tmp_path: Path) -> None:
    config = config_from(tmp_path, LLAMA_3_3_70B)
    count = count_parameters(config)
    assert count.total == 70_553_706_496  # ~70.6B: what the model card calls 70B
    assert count.lm_head == count.embedding == 128256 * 8192  # untied
    estimate = estimate_memory(config, dtype=torch.bfloat16, sae_shape=GOODFIRE_SAE)
    assert estimate.model / GIB == pytest.approx(131.4, abs=0.05)
    assert estimate.sae == (2 * 8192 * 65536 + 65536 + 8192) * 2  # ~2 GiB of bf16
    # 2 (K, V) x 80 layers x 8 KV heads x 128 dims x 2 bytes per token, for 16,384 tokens
    assert estimate.cache == 2 * 80 * 8 * 128 * 2 * 16384
    assert estimate.describe() == "Needs about 138.4 GiB (model 131.4 + SAE 2.0 + cache 5.0)"
    four_bits = estimate_memory(config, dtype=torch.bfloat16, quantize="4bit")
    eight_bits = estimate_memory(config, dtype=torch.bfloat16, quantize="8bit")
    assert 38 < four_bits.model / GIB < 41 < eight_bits.model / GIB < 70  # embeddings stay bf16


def test_llama_3_1_8b_has_about_8_billion_parameters(tmp_path: Path) -> None:
    config = config_from(tmp_path, LLAMA_3_1_8B)
    assert count_parameters(config).total == 8_030_261_248
    estimate = estimate_memory(config, dtype=torch.bfloat16, sae_shape=(4096, 65536))
    assert estimate.model / GIB == pytest.approx(14.96, abs=0.01)
    assert estimate_memory(config, dtype=torch.float32).model == 2 * estimate.model


def test_gemma_3_270m_ties_its_embedding_and_fits_a_laptop(tmp_path: Path) -> None:
    config = config_from(tmp_path, GEMMA_3_270M_IT)
    count = count_parameters(config)
    assert count.lm_head == 0
    assert count.total == 268_098_176
    estimate = estimate_memory(config, dtype=torch.float32, sae_shape=(640, 16384))
    assert estimate.total < 2 * GIB


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("llama", {}),
        ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
        ("gemma3_text", {"head_dim": 32}),
        ("gemma2", {"head_dim": 16}),
        ("qwen3", {"head_dim": 32}),
        ("qwen2", {}),
        ("mistral", {}),
    ],
)
def test_the_count_equals_the_parameters_transformers_builds(model_type: str, extra: dict) -> None:
    config = transformers.AutoConfig.for_model(model_type, **SMALL, **extra)
    with torch.device("meta"):  # shapes only, no memory
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # transformers 5.0 leaves a meta model's tied weights apart
    assert count_parameters(config).total == sum(p.numel() for p in model.parameters())


def test_free_memory_on_the_cpu_is_host_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    free = free_memory("cpu")
    assert free.where == "host RAM" and free.bytes is not None and free.bytes > 0
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed: /proc/meminfo
    if Path("/proc/meminfo").exists():
        without_psutil = host_available_memory()
        assert without_psutil is not None
        assert abs(without_psutil - free.bytes) < 0.5 * free.bytes


# ---- loading ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: ModelBundle) -> tuple[str, str]:
    """The tiny model saved as a Hugging Face folder, and its SAE as a Gemma Scope file."""
    folder = tmp_path_factory.mktemp("saved")
    tiny_bundle.model.save_pretrained(folder / "model")
    tiny_bundle.tokenizer.save_pretrained(folder / "model")
    sae = tiny_bundle.sae
    weights = Weights(
        sae.W_enc.detach(),
        sae.b_enc.detach(),
        sae.W_dec.detach(),
        sae.b_dec.detach(),
        torch.zeros(sae.d_sae),
    )
    path = write_gemma_scope(folder / "layer_1/width_512/average_l0_3/params.npz", weights)
    return str(folder / "model"), str(path)


def logits(bundle: ModelBundle) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        return bundle.model(input_ids=ids).logits


def test_loading_prints_the_estimate_and_freezes_everything(
    saved: tuple[str, str], tiny_bundle: ModelBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = load_bundle(*saved, None, None)
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "Needs" in line]
    assert line.startswith("Needs about 0.") and line.endswith("GiB free on host RAM.")
    assert "(model 0." in line and " + SAE 0." in line and " + cache 0." in line
    assert not any(p.requires_grad for p in bundle.model.parameters())
    assert not any(p.requires_grad for p in bundle.sae.parameters())
    assert not bundle.model.training
    torch.testing.assert_close(logits(bundle), logits(tiny_bundle))


def test_what_does_not_fit_is_refused_in_one_line_unless_told_to_try(
    saved: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "free_memory", lambda *_a, **_k: FreeMemory(GIB // 1000, "cuda:0"))
    with pytest.raises(NotEnoughMemory) as refused:
        load_bundle(*saved, None, None)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("Needs about 0.")
    assert "; 0.00 GiB free on cuda:0. It does not fit:" in message
    assert "--quantize 4bit" in message and "--ignore-memory-check" in message
    assert load_bundle(*saved, None, None, check_memory=False).layer == 1


def test_serve_refuses_what_does_not_fit_with_one_line(
    saved: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(loading, "free_memory", lambda *_a, **_k: FreeMemory(1024, "host RAM"))
    model, sae = saved
    assert cli.main(["--model", model, "--sae", sae, "--device", "cpu"]) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "could not load" in line]
    assert "It does not fit" in line


def test_device_map_auto_on_a_machine_without_gpus_loads_on_the_cpu(
    saved: tuple[str, str], tiny_bundle: ModelBundle
) -> None:
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed (pip install accelerate): device_map needs it")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: device_map='auto' would place the model there")
    bundle = load_bundle(*saved, None, None, device="auto", device_map="auto")
    assert {p.device.type for p in bundle.model.parameters()} == {"cpu"}
    assert bundle.sae.W_dec.device == layer_device(bundle.model, bundle.layer)
    torch.testing.assert_close(logits(bundle), logits(tiny_bundle))
    with pytest.raises(ValueError, match="--device-map auto places the model .* drop --device"):
        load_bundle(*saved, None, None, device="cuda", device_map="auto")


def test_quantize_is_refused_in_one_line_without_cuda_or_bitsandbytes(
    saved: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal without CUDA cannot be seen here")
    with pytest.raises(ValueError, match=r"^--quantize 8bit needs an NVIDIA GPU") as no_gpu:
        load_bundle(*saved, None, None, quantize="8bit")
    assert "\n" not in str(no_gpu.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else importlib.util.find_spec(name, *a),
    )
    with pytest.raises(
        ValueError, match=r"^--quantize 4bit needs the bitsandbytes package: pip install"
    ):
        load_bundle(*saved, None, None, device="cuda", quantize="4bit")


def test_quantize_loads_in_8_and_4_bits_on_a_gpu(saved: tuple[str, str]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: bitsandbytes quantises on NVIDIA GPUs only")
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (pip install 'ember-bot[gpu]')")
    for bits in ("8bit", "4bit"):
        bundle = load_bundle(*saved, None, None, device="cuda", dtype="bfloat16", quantize=bits)
        assert bundle.sae.W_dec.dtype == torch.bfloat16
        assert bundle.sae.W_dec.device == layer_device(bundle.model, bundle.layer)


def test_placement_options_for_from_pretrained() -> None:
    assert placement("cpu", "none", "none", torch.float32) == {}
    assert placement("cpu", "auto", "none", torch.float32) == {"device_map": "auto"}
    options = placement("cuda:1", "none", "4bit", torch.bfloat16)
    assert options["device_map"] == {"": "cuda:1"}  # read straight onto the GPU
    config = options["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert placement("cuda", "auto", "8bit", torch.bfloat16)["quantization_config"].load_in_8bit
    with pytest.raises(ValueError, match="Unknown device map 'balanced'"):
        placement_device("auto", "balanced")


def test_the_sae_goes_where_accelerate_put_the_hooked_layer(tiny_bundle: ModelBundle) -> None:
    class Spread(torch.nn.Module):
        def __init__(self, device_map: dict[str, Any]) -> None:
            super().__init__()
            self.model = tiny_bundle.model.model
            self.hf_device_map = device_map

        def get_decoder(self) -> torch.nn.Module:
            return self.model

    spread = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    assert layer_device(Spread(spread), 1) == torch.device("cuda", 1)  # type: ignore[arg-type]
    offloaded = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"}
    assert layer_device(Spread(offloaded), 1) == torch.device("cuda", 0)  # type: ignore[arg-type]
    assert layer_device(Spread({"": "cpu"}), 1) == torch.device("cpu")  # type: ignore[arg-type]
    assert layer_device(tiny_bundle.model, 1) == torch.device("cpu")


def test_a_multimodal_gemma_3_checkpoint_is_served_from_its_text_decoder(
    tmp_path: Path, tiny_bundle: ModelBundle
) -> None:
    """Gemma 3 4B, 12B and 27B load as Gemma3ForConditionalGeneration, whose decoder layers
    are model.language_model.layers: the hook, the fit check and the SAE's device find them."""
    tokenizer = tiny_bundle.tokenizer
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    text |= {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
    text |= {"vocab_size": len(tokenizer), "sliding_window": 16}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    vision |= {"num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4
    )
    torch.manual_seed(0)
    transformers.Gemma3ForConditionalGeneration(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    weights = Weights(
        torch.randn(64, 32), torch.zeros(32), torch.randn(32, 64), torch.zeros(64), torch.zeros(32)
    )
    sae = write_gemma_scope(tmp_path / "layer_1/width_32/average_l0_3/params.npz", weights)

    bundle = load_bundle(str(tmp_path / "model"), str(sae), 1, None)

    assert type(bundle.model).__name__ == "Gemma3ForConditionalGeneration"
    assert layer_device(bundle.model, 1) == torch.device("cpu")
    messages = [{"role": "user", "content": "hello there"}]
    with TestClient(create_app(bundle)) as client:
        reply = client.post(
            f"{API_PREFIX}/chat/completions",
            json={"model": bundle.model_id, "messages": messages, "max_completion_tokens": 3},
        )
        features = client.post(
            f"{API_PREFIX}/chat-attribution/compute-features",
            json={"model": bundle.model_id, "messages": messages},
        )
    assert reply.status_code == 200, reply.text
    assert features.status_code == 200, features.text
    with pytest.raises(ValueError, match="does not exist"):
        load_bundle(str(tmp_path / "model"), str(sae), 2, None)
