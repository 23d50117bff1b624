"""The `tiny` demo: a small Llama model, tokenizer and SAE built in memory, with no download.

The model is random, but wired so that it is a fair demo of steering and inspection:

- Hidden dimensions are split into an *ordinary* part (used freely by the random transformer) and
  a few *reserved* ones that no layer writes to (their rows in every `o_proj` and `down_proj` are
  zero), so at the hooked layer (the last one's output) they still hold what the current token's
  embedding put there:
  - one dimension per word class (noun, verb, ...): the unembedding reads them as class-to-class
    transition scores, so the random model writes word salad with a grammar (determiner, then
    adjective or noun, ...), ends sentences with punctuation, and ends its reply after them;
  - a constant "bias" dimension: a per-token prior (common words likelier, sub-word pieces and
    special tokens never produced);
  - two dimensions per planted topic: one that its words' embeddings write (the SAE's encoder
    reads it) and one that their unembeddings read (the SAE's decoder writes it). Kept apart, so
    that saying a topic word does not by itself pull the model into repeating the topic.
- The SAE, hooked at the last layer's output, has a planted feature per topic in TINY_PLANTED:
  its encoder column points along the (lexical part of the) embeddings of the topic's tokens and
  its decoder row along their unembeddings, so steering it makes the model say those words and
  text containing them fires it. Every other feature detects a small group of words of one class
  (encoder from their embeddings, decoder towards their unembeddings) and is labelled with them.

Everything is seeded: two builds give identical weights and outputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from server.model.labels import LabelIndex
from server.model.sae import SparseAutoencoder
from server.model.tiny.features import build_sae
from server.model.tiny.network import Layout, build_model
from server.model.tiny.tokenizer import build_tokenizer
from server.model.tiny.vocabulary import spoken_words

SEED = 20240917
MODEL_ID = "ember-tiny"
SAE_ID = "ember-tiny-sae"


@dataclass(frozen=True)
class TinyParts:
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    sae: SparseAutoencoder
    labels: LabelIndex
    layer: int


def build_tiny_parts() -> TinyParts:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        rng = random.Random(SEED)
        layout = Layout.build()
        tokenizer = build_tokenizer()
        words = spoken_words(tokenizer)
        model = build_model(tokenizer, words, layout)
        sae, labels = build_sae(model, tokenizer, words, layout, rng)
    return TinyParts(model, tokenizer, sae, labels, layer=model.config.num_hidden_layers - 1)
