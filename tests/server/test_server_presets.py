"""Presets: the tiny demo (deterministic, planted features that work) and real-model loading."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from server.model.hub import parse_spec
from server.model.presets import (
    PRESETS,
    TINY_PLANTED,
    ModelBundle,
    build_tiny,
    load_bundle,
    load_preset,
    resolve_dtype,
)
from tests.support.sae_formats import Weights, write_gemma_scope

STEERING_STRENGTH = 0.5  # the runtime's unit: +1 adds half a typical residual-stream norm
PROMPTS = ["Tell me about your day.", "Hello! How are you today?", "Write a short poem."]


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return build_tiny()


def prompt_ids(bundle: ModelBundle, messages: list[dict[str, str]], **options: bool) -> list[int]:
    text = bundle.tokenizer.apply_chat_template(messages, tokenize=False, **options)
    return bundle.tokenizer(text, add_special_tokens=False).input_ids


@contextmanager
def residual_hook(bundle: ModelBundle, add: torch.Tensor | None = None) -> Iterator[list]:
    """Capture (and optionally shift) the hooked residual stream."""
    captured: list[torch.Tensor] = []

    def hook(_module: object, _args: object, output: torch.Tensor) -> torch.Tensor:
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden[0])
        return hidden + add if add is not None else hidden

    handle = bundle.model.model.layers[bundle.layer].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def nudge(bundle: ModelBundle, feature: int, value: float) -> torch.Tensor:
    """`value` in the runtime's steering units along the feature's decoder direction."""
    norms = []
    for prompt in PROMPTS:
        with residual_hook(bundle) as captured, torch.no_grad():
            bundle.model(torch.tensor([prompt_ids(bundle, [{"role": "user", "content": prompt}])]))
        norms.append(captured[0][1:].norm(dim=-1))
    direction = bundle.sae.W_dec[feature] / bundle.sae.W_dec[feature].norm()
    return value * STEERING_STRENGTH * torch.cat(norms).median() * direction


def generate(
    bundle: ModelBundle,
    prompt: str,
    tokens: int,
    add: torch.Tensor | None = None,
    seed: int | None = None,
) -> tuple[str, bool]:
    """Greedy (or seeded sampling) reply and whether it ended with eos."""
    ids = prompt_ids(bundle, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    sampling = {"do_sample": seed is not None, "temperature": 0.7, "top_p": 1.0, "top_k": 0}
    with residual_hook(bundle, add), torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed or 0)
        output = bundle.model.generate(
            torch.tensor([ids]),
            max_new_tokens=tokens,
            pad_token_id=bundle.tokenizer.eos_token_id,
            **(sampling if seed is not None else {"do_sample": False}),
        )
    reply = output[0, len(ids) :].tolist()
    ended = bundle.tokenizer.eos_token_id in reply
    return bundle.tokenizer.decode(reply, skip_special_tokens=True), ended


def features_over(bundle: ModelBundle, text: str) -> torch.Tensor:
    """SAE activations over the content tokens of a chat whose assistant turn is `text`."""
    messages = [{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": text}]
    ids = prompt_ids(bundle, messages)
    with residual_hook(bundle) as captured, torch.no_grad():
        bundle.model(torch.tensor([ids]))
    special = set(bundle.tokenizer.all_special_ids)
    content = torch.tensor([token not in special for token in ids])
    return bundle.sae.encode(captured[0])[content]


def count(text: str, words: list[str]) -> int:
    return sum(len(re.findall(rf"\b{word}\b", text, re.IGNORECASE)) for word in words)


# ---- the tiny bundle -----------------------------------------------------------------------------


def test_two_builds_are_identical(tiny: ModelBundle) -> None:
    again = build_tiny()
    first, second = tiny.model.state_dict(), again.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            tiny.sae.state_dict().values(), again.sae.state_dict().values(), strict=True
        )
    )
    assert tiny.tokenizer.get_vocab() == again.tokenizer.get_vocab()
    assert [tiny.labels.label(i) for i in range(tiny.sae.d_sae)] == [
        again.labels.label(i) for i in range(again.sae.d_sae)
    ]
    assert generate(tiny, PROMPTS[0], 16) == generate(again, PROMPTS[0], 16)


def test_tiny_is_a_small_llama_with_a_llama3_chat_template(tiny: ModelBundle) -> None:
    assert tiny.model.config.model_type == "llama"
    assert not tiny.model.training
    assert (tiny.model_id, tiny.sae_id, tiny.layer) == ("ember-tiny", "ember-tiny-sae", 1)
    assert tiny.layer == len(tiny.model.model.layers) - 1 == tiny.sae.hook_layer
    assert tiny.sae.d_in == tiny.model.config.hidden_size
    rendered = tiny.tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there "},
            {"role": "assistant", "content": "Hello."},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tiny.tokenizer.eos_token == "<|eot_id|>"
    assert tiny.model.generation_config.eos_token_id == tiny.tokenizer.eos_token_id


def test_tokenizer_keeps_words_whole_and_round_trips_any_text(tiny: ModelBundle) -> None:
    for _, words in TINY_PLANTED.values():
        for word in words:
            for spelling in (" " + word, word.capitalize()):
                assert len(tiny.tokenizer(spelling, add_special_tokens=False).input_ids) == 1
    text = "Ahoy, Zürich! naïve 🙂 1234 <tags> tabs\tand\nnewlines"
    ids = tiny.tokenizer(text, add_special_tokens=False).input_ids
    assert tiny.tokenizer.decode(ids) == text


def test_plain_replies_are_sentences_that_end(tiny: ModelBundle) -> None:
    replies = [generate(tiny, prompt, 48, seed=seed) for prompt in PROMPTS for seed in range(3)]
    assert sum(ended for _, ended in replies) >= 8, replies
    for reply, _ in replies:
        assert reply[:1].isupper(), reply
        assert "<|" not in reply


def test_search_finds_planted_features(tiny: ModelBundle) -> None:
    for label, (index, _) in TINY_PLANTED.items():
        assert tiny.labels.label(index) == label
        assert tiny.labels.search(label, top_k=3)[0][0] == index
    assert tiny.labels.search("formal writing", top_k=3)[0][0] == TINY_PLANTED["formal tone"][0]
    assert tiny.labels.search("pirate", top_k=3)[0][0] == TINY_PLANTED["pirate speech"][0]


# ---- planted features: steering and inspection ---------------------------------------------------


@pytest.mark.parametrize("label", list(TINY_PLANTED))
def test_nudging_a_planted_feature_raises_its_words(tiny: ModelBundle, label: str) -> None:
    index, words = TINY_PLANTED[label]
    ids = torch.tensor(
        [prompt_ids(tiny, [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True)]
    )
    planted = [tiny.tokenizer.convert_tokens_to_ids(word.capitalize()) for word in words]
    with torch.no_grad():
        plain = tiny.model(ids).logits[0, -1]
        with residual_hook(tiny, nudge(tiny, index, 1.0)):
            steered = tiny.model(ids).logits[0, -1]
    assert (steered[planted] - plain[planted]).min() > 5
    assert int(steered.argmax()) in planted
    assert int(plain.argmax()) not in planted


def test_steering_strength_sets_how_much_the_planted_words_take_over(tiny: ModelBundle) -> None:
    index, words = TINY_PLANTED["pirate speech"]
    plain, _ = generate(tiny, PROMPTS[0], 24)
    medium, _ = generate(tiny, PROMPTS[0], 24, nudge(tiny, index, 0.5))
    strong, _ = generate(tiny, PROMPTS[0], 24, nudge(tiny, index, 1.0))
    assert count(plain, words) == 0, plain
    assert count(medium, words) >= 1, medium
    assert count(strong, words) >= 12, strong
    negative, _ = generate(tiny, PROMPTS[0], 24, nudge(tiny, index, -1.0))
    assert count(negative, words) == 0, negative


@pytest.mark.parametrize("label", list(TINY_PLANTED))
def test_text_with_planted_words_fires_that_feature_most(tiny: ModelBundle, label: str) -> None:
    index, words = TINY_PLANTED[label]
    features = features_over(tiny, "Well, " + " ".join(words) + ".")
    fired = features[:, index] > 0
    assert fired.sum() == len(words)
    assert int(features.sum(dim=0).argmax()) == index
    assert int(features.amax(dim=0).argmax()) == index
    assert int((features > 0).sum(dim=0).argmax()) == index


def test_word_group_features_detect_the_words_their_labels_name(tiny: ModelBundle) -> None:
    planted = {index for index, _ in TINY_PLANTED.values()}
    detected = missed = 0
    for index in range(0, tiny.sae.d_sae, 9):
        if index in planted:
            continue
        words = re.findall(r"'(\w+)'", tiny.labels.label(index))
        assert len(words) >= 2, tiny.labels.label(index)
        fired = features_over(tiny, "Oh, " + " ".join(words))[-len(words) :, index] > 0
        detected += int(fired.sum())
        missed += int((~fired).sum())
    assert detected > 100
    assert missed <= detected / 50


# ---- real presets and loading from files ---------------------------------------------------------


def test_real_presets_name_hub_files_and_layers() -> None:
    assert {"tiny", "gemma-3-270m-it", "llama-3.1-8b", "llama-3.3-70b"} <= set(PRESETS)
    expected = {
        "gemma-3-270m-it": (
            "google/gemma-3-270m-it",
            "google/gemma-scope-2-270m-it",
            "resid_post/layer_12_width_16k_l0_medium/params.safetensors",
            12,
        ),
        "llama-3.1-8b": (
            "meta-llama/Llama-3.1-8B-Instruct",
            "Goodfire/Llama-3.1-8B-Instruct-SAE-l19",
            "Llama-3.1-8B-Instruct-SAE-l19.pth",
            19,
        ),
        "llama-3.3-70b": (
            "meta-llama/Llama-3.3-70B-Instruct",
            "Goodfire/Llama-3.3-70B-Instruct-SAE-l50",
            "Llama-3.3-70B-Instruct-SAE-l50.pt",
            50,
        ),
    }
    for name, (model, repo, path, layer) in expected.items():
        preset = PRESETS[name]
        assert (preset.model, *parse_spec(preset.sae), preset.layer) == (model, repo, path, layer)
        assert preset.description


def test_unknown_preset_and_dtype_are_refused() -> None:
    with pytest.raises(ValueError, match="Unknown preset 'huge'; choose one of: tiny"):
        load_preset("huge")
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        resolve_dtype("float8", "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert load_preset("tiny", device="auto", dtype="auto").model_id == "ember-tiny"


def tiny_sae_weights(tiny: ModelBundle) -> Weights:
    sae = tiny.sae
    return Weights(
        sae.W_enc.detach(),
        sae.b_enc.detach(),
        sae.W_dec.detach(),
        sae.b_dec.detach(),
        torch.zeros(sae.d_sae),
    )


def test_load_bundle_from_a_local_model_gemma_scope_file_and_neuronpedia_labels(
    tiny: ModelBundle, tmp_path: Path
) -> None:
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    sae_path = write_gemma_scope(
        tmp_path / "layer_1/width_512/average_l0_3/params.npz", tiny_sae_weights(tiny)
    )
    labels = tmp_path / "explanations.json"
    labels.write_text(json.dumps([{"index": "37", "description": "sea shanties"}]))

    bundle = load_bundle(str(tmp_path / "model"), str(sae_path), None, str(labels))

    assert bundle.layer == 1  # from the Gemma Scope path
    assert bundle.labels.label(37) == "sea shanties"
    assert bundle.labels.label(38) == "feature 38"
    assert bundle.tokenizer.chat_template == tiny.tokenizer.chat_template
    ids = torch.tensor([prompt_ids(tiny, [{"role": "user", "content": "hello"}])])
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(ids).logits, tiny.model(ids).logits)
    text = features_over(tiny, "ahoy matey")
    torch.testing.assert_close(features_over(bundle, "ahoy matey"), text)


def test_load_bundle_refuses_pairs_that_do_not_fit(tiny: ModelBundle, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    sae_path = write_gemma_scope(tmp_path / "params.npz", tiny_sae_weights(tiny))
    with pytest.raises(ValueError, match="does not say which layer"):
        load_bundle(str(tmp_path / "model"), str(sae_path), None, None)
    with pytest.raises(ValueError, match="Layer 7 does not exist: .* has layers 0-1"):
        load_bundle(str(tmp_path / "model"), str(sae_path), 7, None)
    narrow = write_gemma_scope(tmp_path / "narrow/params.npz", Weights.random(d_in=32))
    width = tiny.model.config.hidden_size
    with pytest.raises(ValueError, match=f"size 32, but .* residual stream has size {width}"):
        load_bundle(str(tmp_path / "model"), str(narrow), 1, None)
