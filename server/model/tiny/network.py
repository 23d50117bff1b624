"""The tiny model's random Llama, with its embeddings and unembeddings written so that it talks
in grammatical word salad (see build.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from server.model.tiny.vocabulary import CLASSES, FOLLOWERS, PLANTED_TOPICS, Word

HIDDEN = 128

# Sizes in residual-stream units (the transformer's own residual has norm ~0.2) and in logits.
ORDINARY_EMBEDDING_STD = 0.06
RESERVED_EMBEDDING = 0.4  # class, bias and topic components of an embedding
ORDINARY_UNEMBEDDING_STD = 0.15  # context-dependent word choice: ~1 logit of spread
FORBIDDEN_LOGIT = -8.0
WRONG_FORM_LOGIT = -16.0
EOS_LOGIT = 4.0
UNSAID_PRIOR = -10.0  # sub-word pieces, special tokens, wrong-case forms
PLANTED_UNEMBEDDING = 2.0  # logit gain per unit of normalised planted component


@dataclass(frozen=True)
class Layout:
    """Which hidden dimension holds what (see build.py)."""

    ordinary: slice
    classes: dict[str, int]
    bias: int
    topic_in: dict[str, int]  # written by a topic's words' embeddings
    topic_out: dict[str, int]  # read by their unembeddings

    @classmethod
    def build(cls) -> Layout:
        topics = len(PLANTED_TOPICS)
        first = HIDDEN - len(CLASSES) - 1 - 2 * topics
        dims = iter(range(first, HIDDEN))
        classes = {name: next(dims) for name in CLASSES}
        bias = next(dims)
        topic_in = {label: next(dims) for label in PLANTED_TOPICS}
        topic_out = {label: next(dims) for label in PLANTED_TOPICS}
        return cls(slice(0, first), classes, bias, topic_in, topic_out)

    @property
    def reserved(self) -> list[int]:
        return list(range(self.ordinary.stop, HIDDEN))

    @property
    def lexical(self) -> list[int]:
        """Dimensions that tell words apart (ordinary and topic), not class or bias."""
        return [*range(self.ordinary.stop), *self.topic_in.values(), *self.topic_out.values()]


def build_model(
    tokenizer: PreTrainedTokenizerFast, words: list[Word], layout: Layout
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[layout.reserved] = 0
            layer.mlp.down_proj.weight[layout.reserved] = 0
        _write_embeddings(model, tokenizer, words, layout)
        _write_unembeddings(model, tokenizer, words, layout)
    return model


def _write_embeddings(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, words: list[Word], layout: Layout
) -> None:
    embedding = model.model.embed_tokens.weight
    embedding.normal_(0.0, ORDINARY_EMBEDDING_STD)
    embedding[:, layout.ordinary.stop :] = 0
    embedding[:, layout.bias] = RESERVED_EMBEDDING
    # Anything that is not a spoken word (specials, newlines, pieces) reads as a sentence start.
    embedding[:, layout.classes["start"]] = RESERVED_EMBEDDING
    vocabulary = tokenizer.get_vocab()
    for spellings, word_class, topic in _spelling_groups(words):
        ids = [vocabulary[spelling] for spelling in spellings if spelling in vocabulary]
        # All spellings of a word ('river', ' river', 'River', ' River') mean the same.
        embedding[ids, layout.ordinary] = embedding[ids[0], layout.ordinary]
        embedding[ids, layout.classes["start"]] = 0
        embedding[ids, layout.classes[word_class]] = RESERVED_EMBEDDING
        if topic:
            embedding[ids, layout.topic_in[topic]] = RESERVED_EMBEDDING


def _spelling_groups(words: list[Word]) -> list[tuple[list[str], str, str | None]]:
    """The spellings of each spoken word (also those never said, like ' River'), with its class
    and topic."""
    groups: dict[str, tuple[list[str], str, str | None]] = {}
    for word in words:
        bare = word.text.strip().lower()
        spellings = (
            [bare, "Ġ" + bare, bare.capitalize(), "Ġ" + bare.capitalize()]
            if bare.isalpha()
            else [word.token]
        )
        groups.setdefault(bare, (spellings, word.word_class, word.topic))
    return list(groups.values())


def _write_unembeddings(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, words: list[Word], layout: Layout
) -> None:
    """Logit(token) = ordinary noise + prior + transition(previous class -> token's class)
    + planted gain, with the reserved components read through the final RMSNorm."""
    scale = _reserved_scale(layout)
    head = model.lm_head.weight
    head.normal_(0.0, ORDINARY_UNEMBEDDING_STD)
    head[:, layout.ordinary.stop :] = 0
    head[:, layout.bias] = UNSAID_PRIOR / scale
    head[:, list(layout.classes.values())] = FORBIDDEN_LOGIT / scale
    vocabulary = tokenizer.get_vocab()
    for word in words:
        row = head[vocabulary[word.token]]
        row[layout.bias] = word.prior / scale
        for previous, followers in FOLLOWERS.items():
            row[layout.classes[previous]] = _transition(previous, followers, word) / scale
        if word.topic:
            row[layout.topic_out[word.topic]] = PLANTED_UNEMBEDDING
    eos = head[tokenizer.eos_token_id]
    eos[layout.ordinary] = 0
    eos[layout.bias] = 0
    for previous, followers in FOLLOWERS.items():
        eos[layout.classes[previous]] = (
            EOS_LOGIT if "eos" in followers else FORBIDDEN_LOGIT
        ) / scale


def _transition(previous: str, followers: tuple[str, ...], word: Word) -> float:
    """Logit for `word` after a token of class `previous`. A capitalised form mid-sentence is
    ruled out harder than a class out of order, so strong steering bends grammar, not spelling."""
    if word.at_start != (previous == "start"):
        return WRONG_FORM_LOGIT
    return 0.0 if word.word_class in followers else FORBIDDEN_LOGIT


def _reserved_scale(layout: Layout) -> float:
    """What a reserved component of RESERVED_EMBEDDING becomes after the final RMSNorm, roughly:
    the residual holds three such components (class, bias, maybe a topic) plus the ordinary part."""
    ordinary_norm = ORDINARY_EMBEDDING_STD * layout.ordinary.stop**0.5
    residual_norm = (3 * RESERVED_EMBEDDING**2 + ordinary_norm**2 + 0.2**2) ** 0.5
    return RESERVED_EMBEDDING / residual_norm * HIDDEN**0.5
