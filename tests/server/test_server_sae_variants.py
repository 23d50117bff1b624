"""SAE variants beyond the basic formats: Gemma Scope 2's params.safetensors, SAELens TopK with
rescale_acts_by_decoder_norm, and pre-6.0 SAELens configs. Each is checked against an independent
NumPy computation of what SAELens does with the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from server.model.sae import load_sae
from tests.support.sae_formats import Weights, write_gemma_scope_2, write_saelens

WEIGHTS = Weights.random()
D_IN, D_SAE = WEIGHTS.W_enc.shape
INPUTS = torch.randn(5, 7, D_IN, generator=torch.Generator().manual_seed(1))
X = INPUTS.double().numpy()


def arrays(weights: Weights) -> tuple[np.ndarray, ...]:
    return tuple(
        tensor.double().numpy()
        for tensor in (weights.W_enc, weights.b_enc, weights.W_dec, weights.b_dec)
    )


def assert_matches(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=1e-5, atol=1e-5)


# ---- Gemma Scope 2 -----------------------------------------------------------------------------


def test_gemma_scope_2_params_safetensors_is_jumprelu_without_b_dec_on_the_input(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "resid_post" / "layer_12_width_16k_l0_medium"
    sae = load_sae(str(write_gemma_scope_2(folder, WEIGHTS)))
    W_enc, b_enc, W_dec, b_dec = arrays(WEIGHTS)
    pre = X @ W_enc + b_enc  # no x - b_dec
    expected = np.where(pre > WEIGHTS.threshold.double().numpy(), pre, 0.0)
    assert 0 < (expected > 0).mean() < 1 and ((pre > 0) & (expected == 0)).any()
    features = sae.encode(INPUTS)
    assert_matches(features, expected)
    assert_matches(sae.decode(features), expected @ W_dec + b_dec)
    assert (sae.activation, sae.apply_b_dec_to_input, sae.hook_layer) == ("jumprelu", False, 12)
    assert load_sae(str(folder)).hook_layer == 12  # the folder works too


def test_gemma_scope_2_config_json_names_the_layer(tmp_path: Path) -> None:
    config = {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-270m-it",
        "hf_hook_point_in": "model.layers.7.output",
    }
    path = write_gemma_scope_2(tmp_path / "some_folder", WEIGHTS, config)
    assert load_sae(str(path)).hook_layer == 7


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "relu"}, "architecture 'relu' is not supported"),
        (
            {
                "architecture": "jump_relu",
                "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
                "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output",
            },
            "only residual-stream SAEs",
        ),
        (
            {"architecture": "jump_relu", "hf_hook_point_in": "model.layers.3.self_attn.o_proj"},
            "this SAE reads 'model.layers.3.self_attn.o_proj'",
        ),
    ],
)
def test_gemma_scope_2_saes_off_the_residual_stream_are_refused(
    tmp_path: Path, config: dict, message: str
) -> None:
    path = write_gemma_scope_2(tmp_path / "layer_3_width_16k_l0_small", WEIGHTS, config)
    with pytest.raises(ValueError, match=message):
        load_sae(str(path))


def test_gemma_scope_2_missing_key_is_named(tmp_path: Path) -> None:
    path = write_gemma_scope_2(tmp_path / "layer_1", WEIGHTS)
    tensors = load_file(path)
    del tensors["threshold"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="missing threshold"):
        load_sae(str(path))


# ---- SAELens TopK with rescale_acts_by_decoder_norm --------------------------------------------


def uneven_decoder() -> Weights:
    """Decoder rows with norms from 0.05 to 20: rescaling changes both values and the top k."""
    scales = torch.logspace(-1.3, 1.3, D_SAE)[torch.randperm(D_SAE, generator=torch.Generator())]
    return Weights(
        WEIGHTS.W_enc,
        WEIGHTS.b_enc,
        WEIGHTS.W_dec * scales[:, None],
        WEIGHTS.b_dec,
        WEIGHTS.threshold,
    )


def topk_reference(weights: Weights, k: int, rescale: bool, b_dec_in: bool) -> np.ndarray:
    """SAELens' TopKSAE.encode: hidden_pre * ||W_dec row|| when rescaling, then ReLU of top k."""
    W_enc, b_enc, W_dec, b_dec = arrays(weights)
    pre = (X - b_dec if b_dec_in else X) @ W_enc + b_enc
    if rescale:
        pre = pre * np.linalg.norm(W_dec, axis=-1)
    kept = np.argsort(-pre, axis=-1)[..., :k]
    features = np.zeros_like(pre)
    np.put_along_axis(features, kept, np.maximum(np.take_along_axis(pre, kept, -1), 0), -1)
    return features


@pytest.mark.parametrize("b_dec_in", [False, True])
def test_topk_rescaled_by_decoder_norm_matches_saelens(tmp_path: Path, b_dec_in: bool) -> None:
    weights = uneven_decoder()
    directory = write_saelens(
        tmp_path,
        weights,
        architecture="topk",
        k=6,
        apply_b_dec_to_input=b_dec_in,
        rescale_acts_by_decoder_norm=True,
    )
    sae = load_sae(str(directory))
    features = sae.encode(INPUTS)
    expected = topk_reference(weights, 6, rescale=True, b_dec_in=b_dec_in)
    assert_matches(features, expected)
    # decode divides the activations by the norms again (SAELens' TopKSAE.decode)
    W_dec, b_dec = arrays(weights)[2:]
    norms = np.linalg.norm(W_dec, axis=-1)
    assert_matches(sae.decode(features), (expected / norms) @ W_dec + b_dec)
    # and it is not what the same file means without the flag
    unscaled = topk_reference(weights, 6, rescale=False, b_dec_in=b_dec_in)
    assert np.abs(expected - unscaled).max() > 1
    assert ((expected > 0) != (unscaled > 0)).any()


def test_rescale_is_refused_where_saelens_has_no_such_option(tmp_path: Path) -> None:
    directory = write_saelens(tmp_path, WEIGHTS, rescale_acts_by_decoder_norm=True)
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm is supported for top-k"):
        load_sae(str(directory))


# ---- SAELens configs from before 6.0 -----------------------------------------------------------


def write_pre_6(directory: Path, **config: object) -> Path:
    """A config as SAELens 0.x-3.x wrote it: hook_point, hook_point_layer, bool normalization, and
    no apply_b_dec_to_input (which then defaults to true, as in SAELens)."""
    write_saelens(directory, WEIGHTS)
    old = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "hook_point_head_index": None,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "activation_fn_str": "relu",
        "normalize_activations": False,
        "context_size": 128,
    }
    (directory / "cfg.json").write_text(json.dumps(old | config), encoding="utf-8")
    return directory


def test_pre_6_config_keys_and_bool_normalization_are_read(tmp_path: Path) -> None:
    sae = load_sae(str(write_pre_6(tmp_path / "old")))
    assert sae.hook_layer == 7  # blocks.8.hook_resid_pre is layer 7's output
    W_enc, b_enc, W_dec, b_dec = arrays(WEIGHTS)
    expected = np.maximum((X - b_dec) @ W_enc + b_enc, 0)
    assert_matches(sae.encode(INPUTS), expected)
    assert_matches(sae.decode(sae.encode(INPUTS)), expected @ W_dec + b_dec)
    only_layer = write_pre_6(tmp_path / "layer", hook_point=None, normalize_activations="none")
    assert load_sae(str(only_layer)).hook_layer == 8


def test_pre_6_normalization_true_and_scaling_factors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'expected_average_only_in' is not supported"):
        load_sae(str(write_pre_6(tmp_path / "normalized", normalize_activations=True)))
    directory = write_pre_6(tmp_path / "scaled")
    weights = load_file(directory / "sae_weights.safetensors")
    save_file(
        weights | {"scaling_factor": torch.ones(D_SAE)}, directory / "sae_weights.safetensors"
    )
    ones = load_sae(str(directory))  # all ones: SAELens drops it
    assert_matches(
        ones.encode(INPUTS), load_sae(str(write_pre_6(tmp_path / "plain"))).encode(INPUTS)
    )
    save_file(
        weights | {"scaling_factor": torch.full((D_SAE,), 2.0)},
        directory / "sae_weights.safetensors",
    )
    with pytest.raises(ValueError, match="scaling_factor other than 1 is not supported"):
        load_sae(str(directory))
