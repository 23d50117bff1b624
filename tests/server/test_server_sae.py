"""SAE loaders: the published formats load to the same numbers, and bad files fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from server.model.hub import parse_spec
from server.model.sae import SparseAutoencoder, load_sae
from tests.support.sae_formats import (
    Weights,
    write_gemma_scope,
    write_goodfire,
    write_hub_cache,
    write_saelens,
)

WEIGHTS = Weights.random()
INPUTS = torch.randn(5, 7, WEIGHTS.W_enc.shape[0], generator=torch.Generator().manual_seed(1))


def relu_reference(x: torch.Tensor, weights: Weights = WEIGHTS) -> torch.Tensor:
    return torch.relu(x @ weights.W_enc + weights.b_enc)


def assert_same_sae(first: SparseAutoencoder, second: SparseAutoencoder) -> None:
    features = first.encode(INPUTS)
    torch.testing.assert_close(features, second.encode(INPUTS))
    torch.testing.assert_close(first.decode(features), second.decode(features))


# ---- the three formats agree -------------------------------------------------------------------


def test_relu_formats_load_to_the_same_encode_and_decode(tmp_path: Path) -> None:
    saelens = load_sae(str(write_saelens(tmp_path / "saelens", WEIGHTS)))
    goodfire = load_sae(str(write_goodfire(tmp_path / "Model-SAE-l1.pth", WEIGHTS)))
    zero_threshold = np.zeros(WEIGHTS.W_enc.shape[1])
    gemma = load_sae(
        str(write_gemma_scope(tmp_path / "params.npz", WEIGHTS, threshold=zero_threshold))
    )

    assert_same_sae(saelens, goodfire)
    assert_same_sae(saelens, gemma)
    torch.testing.assert_close(goodfire.encode(INPUTS), relu_reference(INPUTS))
    features = goodfire.encode(INPUTS)
    assert 0 < (features > 0).float().mean() < 1
    torch.testing.assert_close(goodfire.decode(features), features @ WEIGHTS.W_dec + WEIGHTS.b_dec)


def test_jumprelu_threshold_is_honoured_in_saelens_and_gemma_scope(tmp_path: Path) -> None:
    saelens = load_sae(str(write_saelens(tmp_path / "saelens", WEIGHTS, architecture="jumprelu")))
    gemma = load_sae(str(write_gemma_scope(tmp_path / "params.npz", WEIGHTS)))
    assert saelens.activation == gemma.activation == "jumprelu"
    assert_same_sae(saelens, gemma)

    pre = INPUTS @ WEIGHTS.W_enc + WEIGHTS.b_enc
    features = gemma.encode(INPUTS)
    between = (pre > 0) & (pre <= WEIGHTS.threshold)
    assert between.any(), "the test weights must put some pre-activations under the threshold"
    assert (features[between] == 0).all()
    above = pre > WEIGHTS.threshold
    torch.testing.assert_close(features[above], pre[above])


def test_saelens_b_dec_subtraction_matches_an_equivalent_goodfire_file(tmp_path: Path) -> None:
    """x - b_dec before the encoder is the same as folding -b_dec @ W_enc into b_enc."""
    saelens = load_sae(str(write_saelens(tmp_path / "saelens", WEIGHTS, apply_b_dec_to_input=True)))
    folded = Weights(
        WEIGHTS.W_enc,
        WEIGHTS.b_enc - WEIGHTS.b_dec @ WEIGHTS.W_enc,
        WEIGHTS.W_dec,
        WEIGHTS.b_dec,
        WEIGHTS.threshold,
    )
    goodfire = load_sae(str(write_goodfire(tmp_path / "folded.pth", folded)))
    assert_same_sae(saelens, goodfire)


@pytest.mark.parametrize("legacy", [False, True])
def test_topk_keeps_exactly_the_k_largest(tmp_path: Path, legacy: bool) -> None:
    sae = load_sae(
        str(write_saelens(tmp_path / "topk", WEIGHTS, architecture="topk", k=5, legacy=legacy))
    )
    features = sae.encode(INPUTS)
    assert ((features > 0).sum(dim=-1) <= 5).all()
    pre = INPUTS @ WEIGHTS.W_enc + WEIGHTS.b_enc
    kept = pre.topk(5, dim=-1)
    torch.testing.assert_close(features.gather(-1, kept.indices), torch.relu(kept.values))


def test_dtype_and_source_forms(tmp_path: Path) -> None:
    directory = write_saelens(tmp_path / "saelens", WEIGHTS)
    half = load_sae(str(directory / "cfg.json"), dtype=torch.bfloat16)
    assert half.W_enc.dtype == torch.bfloat16
    assert (half.d_in, half.d_sae) == tuple(WEIGHTS.W_enc.shape)
    assert_same_sae(load_sae(str(directory / "sae_weights.safetensors")), load_sae(str(directory)))


# ---- which layer the file says it reads --------------------------------------------------------


@pytest.mark.parametrize(
    ("hook_name", "layer"),
    [
        ("blocks.12.hook_resid_post", 12),
        ("blocks.12.hook_resid_pre", 11),  # a block's input is the previous block's output
        ("model.layers.19", 19),
    ],
)
def test_saelens_hook_name_gives_the_layer(tmp_path: Path, hook_name: str, layer: int) -> None:
    assert load_sae(str(write_saelens(tmp_path, WEIGHTS, hook_name=hook_name))).hook_layer == layer


@pytest.mark.parametrize("hook_name", ["blocks.5.hook_mlp_out", "blocks.0.hook_resid_pre"])
def test_saes_that_do_not_read_a_layer_output_are_refused(tmp_path: Path, hook_name: str) -> None:
    with pytest.raises(ValueError, match=f"this SAE reads '{hook_name}'"):
        load_sae(str(write_saelens(tmp_path, WEIGHTS, hook_name=hook_name)))


def test_legacy_saelens_config_and_file_names_give_the_layer(tmp_path: Path) -> None:
    legacy = write_saelens(
        tmp_path / "legacy", WEIGHTS, hook_name="blocks.7.hook_resid_post", legacy=True
    )
    assert load_sae(str(legacy)).hook_layer == 7
    goodfire = write_goodfire(tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth", WEIGHTS)
    assert load_sae(str(goodfire)).hook_layer == 19
    gemma = write_gemma_scope(tmp_path / "layer_20/width_16k/average_l0_71/params.npz", WEIGHTS)
    assert load_sae(str(gemma)).hook_layer == 20
    assert load_sae(str(write_goodfire(tmp_path / "unnamed.pt", WEIGHTS))).hook_layer is None


# ---- Hugging Face specs (never the network) ----------------------------------------------------


def test_hf_specs_name_repo_and_path() -> None:
    assert parse_spec(
        "hf:Goodfire/Llama-3.1-8B-Instruct-SAE-l19/Llama-3.1-8B-Instruct-SAE-l19.pth"
    ) == ("Goodfire/Llama-3.1-8B-Instruct-SAE-l19", "Llama-3.1-8B-Instruct-SAE-l19.pth")
    assert parse_spec(
        "hf:google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz"
    ) == ("google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71/params.npz")
    assert parse_spec("hf:someone/saes") == ("someone/saes", "")
    with pytest.raises(ValueError, match="hf:<owner>/<repo>"):
        parse_spec("hf:just-a-name")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hf_files_and_saelens_folders_load_from_the_hub_cache(
    tmp_path: Path, offline_hub: Path
) -> None:
    npz = write_gemma_scope(tmp_path / "params.npz", WEIGHTS)
    saelens = write_saelens(tmp_path / "saelens", WEIGHTS, architecture="jumprelu")
    write_hub_cache(
        offline_hub,
        "google/gemma-scope-2b-pt-res",
        {
            "layer_3/width_16k/average_l0_9/params.npz": npz,
            "blocks.3.hook_resid_post/cfg.json": saelens / "cfg.json",
            "blocks.3.hook_resid_post/sae_weights.safetensors": saelens / "sae_weights.safetensors",
        },
    )
    from_file = load_sae(
        "hf:google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_9/params.npz"
    )
    from_folder = load_sae("hf:google/gemma-scope-2b-pt-res/blocks.3.hook_resid_post")
    assert from_file.hook_layer == 3
    assert_same_sae(from_file, from_folder)


def test_hf_file_missing_offline_says_so(offline_hub: Path) -> None:
    with pytest.raises(ValueError, match="(?i)offline"):
        load_sae("hf:Goodfire/Llama-3.1-8B-Instruct-SAE-l19/Llama-3.1-8B-Instruct-SAE-l19.pth")


# ---- clear errors ------------------------------------------------------------------------------


def test_missing_goodfire_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    torch.save({"encoder_linear.weight": WEIGHTS.W_enc.T}, path)
    with pytest.raises(ValueError, match="missing encoder_linear.bias, decoder_linear.weight"):
        load_sae(str(path))


def test_shape_mismatch_is_explained(tmp_path: Path) -> None:
    path = write_gemma_scope(tmp_path / "params.npz", WEIGHTS, b_dec=np.zeros(3))
    with pytest.raises(ValueError, match=r"b_dec should be \(16,\), got \(3,\)"):
        load_sae(str(path))


def test_declared_size_must_match_the_weights(tmp_path: Path) -> None:
    directory = write_saelens(tmp_path, WEIGHTS, d_sae=4096)
    with pytest.raises(ValueError, match="cfg.json says d_sae=4096, but the weights have d_sae=48"):
        load_sae(str(directory))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"normalize_activations": "constant_norm_rescale"}, "fold the scaling factor"),
        ({"architecture": "topk"}, "needs an integer 'k'"),
    ],
)
def test_unsupported_saelens_configs_are_refused(
    tmp_path: Path, config: dict, message: str
) -> None:
    directory = write_saelens(tmp_path, WEIGHTS)
    current = json.loads((directory / "cfg.json").read_text())
    (directory / "cfg.json").write_text(json.dumps(current | config))
    with pytest.raises(ValueError, match=message):
        load_sae(str(directory))


def test_jumprelu_without_threshold_is_refused(tmp_path: Path) -> None:
    directory = write_saelens(tmp_path, WEIGHTS)
    config = json.loads((directory / "cfg.json").read_text())
    (directory / "cfg.json").write_text(json.dumps(config | {"architecture": "jumprelu"}))
    with pytest.raises(ValueError, match="needs a 'threshold'"):
        load_sae(str(directory))


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="Cannot read .*garbage.pth as a PyTorch state dict"):
        load_sae(str(garbage))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0")
    with pytest.raises(ValueError, match="Unknown SAE format"):
        load_sae(str(other))
    with pytest.raises(ValueError, match="SAE not found"):
        load_sae(str(tmp_path / "nowhere.npz"))
    with pytest.raises(ValueError, match="not a SAELens SAE: cfg.json is missing"):
        load_sae(str(tmp_path))
