"""The tiny model's SAE: a planted feature per topic, and word-group features, each labelled
(see build.py)."""

from __future__ import annotations

import random

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from server.model.labels import LabelIndex
from server.model.sae import SparseAutoencoder
from server.model.tiny.network import HIDDEN, Layout
from server.model.tiny.vocabulary import CLASS_PLURALS, PLANTED_TOPICS, WORDS, Word

D_SAE = 512
PLANTED_ENCODER_GAIN = 8.0
GROUP_ENCODER_GAIN = 3.0
CALIBRATION_LENGTH = 24


def build_sae(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    words: list[Word],
    layout: Layout,
    rng: random.Random,
) -> tuple[SparseAutoencoder, LabelIndex]:
    vocabulary = tokenizer.get_vocab()
    embedding = model.model.embed_tokens.weight.detach()
    head = model.lm_head.weight.detach()
    lexical = torch.tensor(layout.lexical)
    features = _planted_features(vocabulary, words) | _word_group_features(vocabulary, rng)
    W_enc = torch.zeros(HIDDEN, D_SAE)
    W_dec = torch.zeros(D_SAE, HIDDEN)
    for index, (_, token_ids) in features.items():
        W_enc[lexical, index] = _unit(embedding[token_ids][:, lexical].mean(dim=0))
        W_dec[index, lexical] = _unit(_rows_unit(head[token_ids][:, lexical]).mean(dim=0))
    b_enc = _calibrated_biases(model, tokenizer, W_enc, features, words, rng)
    gains = torch.tensor(
        [
            PLANTED_ENCODER_GAIN if index in _planted_indices() else GROUP_ENCODER_GAIN
            for index in range(D_SAE)
        ]
    )
    sae = SparseAutoencoder(
        W_enc * gains,
        b_enc * gains,
        W_dec,
        torch.zeros(HIDDEN),
        activation="relu",
        hook_layer=model.config.num_hidden_layers - 1,
    )
    labels = {index: label for index, (label, _) in features.items()}
    return sae, LabelIndex.from_mapping(labels, D_SAE)


def _planted_indices() -> set[int]:
    return {index for index, _ in PLANTED_TOPICS.values()}


def _planted_features(
    vocabulary: dict[str, int], words: list[Word]
) -> dict[int, tuple[str, list[int]]]:
    return {
        index: (label, [vocabulary[word.token] for word in words if word.topic == label])
        for label, (index, _) in PLANTED_TOPICS.items()
    }


def _word_group_features(
    vocabulary: dict[str, int], rng: random.Random
) -> dict[int, tuple[str, list[int]]]:
    """Every feature that is not planted detects 2-3 words of one class, and is named after them."""
    features = {}
    classes = sorted(WORDS)
    for index in range(D_SAE):
        if index in _planted_indices():
            continue
        word_class = rng.choice(classes)
        group = WORDS[word_class].split()
        chosen = rng.sample(group, k=min(rng.choice((2, 3)), len(group)))
        quoted = [f"'{word}'" for word in chosen]
        names = ", ".join(quoted[:-1]) + " and " + quoted[-1]
        spellings = [text for word in chosen for text in ("Ġ" + word, word.capitalize())]
        features[index] = (
            f"{CLASS_PLURALS[word_class]} such as {names}",
            [vocabulary[text] for text in spellings],
        )
    return features


def _calibrated_biases(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    W_enc: torch.Tensor,
    features: dict[int, tuple[str, list[int]]],
    words: list[Word],
    rng: random.Random,
) -> torch.Tensor:
    """Encoder biases that let each feature fire on its own tokens and stay quiet elsewhere:
    halfway up its mean pre-activation on its tokens, and above 99.5% of the others."""
    token_ids, residual = _calibration_residual(model, tokenizer, words, rng)
    pre = residual @ W_enc
    thresholds = torch.zeros(D_SAE)
    for index, (_, own_ids) in features.items():
        own = torch.isin(token_ids, torch.tensor(own_ids))
        quiet = torch.quantile(pre[~own, index], 0.995)
        thresholds[index] = torch.maximum(0.5 * pre[own, index].mean(), quiet)
    return -thresholds


def _calibration_residual(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    words: list[Word],
    rng: random.Random,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and hooked residual stream over chats whose user turns use every word twice
    (one batched forward pass: the build must stay fast)."""
    mid_sentence = [word.text for word in words if not word.at_start]
    shuffled = [*rng.sample(mid_sentence, len(mid_sentence))] * 2
    rng.shuffle(shuffled)
    prompts = []
    for start in range(0, len(shuffled), CALIBRATION_LENGTH):
        sentence = "".join(shuffled[start : start + CALIBRATION_LENGTH]).strip()
        chat = [{"role": "user", "content": sentence.capitalize() + "."}]
        prompts.append(
            tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        )
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    captured: list[torch.Tensor] = []
    hook = model.model.layers[-1].register_forward_hook(
        lambda _module, _args, output: captured.append(
            output[0] if isinstance(output, tuple) else output
        )
    )
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    real = batch.attention_mask.bool()
    return batch.input_ids[real], captured[0][real]


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm().clamp_min(1e-8)


def _rows_unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)
