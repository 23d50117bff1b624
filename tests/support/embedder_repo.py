"""A tiny BERT sentence-embedding model whose geometry the test decides, saved as a
sentence-transformers repo (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, 1_Pooling/config.json) for the fake Hub or a local folder.

Words of one concept share one random direction (plus a little noise); every other word gets
its own. The transformer layer's output projections are zero, so each token's vector passes
through unchanged (up to layer norm) and mean pooling averages the words' directions: a label
with two "sea" words lands near the query "sailor", whatever its other words are.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from server.model.search.lexical import WORD

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
WIDTH = 32
CONCEPT_NOISE = 0.1
MEAN_POOLING = {"word_embedding_dimension": WIDTH, "pooling_mode_mean_tokens": True}


def embedder_files(
    concepts: dict[str, Iterable[str]], texts: Iterable[str], seed: int = 0
) -> dict[str, bytes]:
    """The repo's files: `concepts` maps a concept to its words; `texts` supply the rest of the
    vocabulary (any word outside it reads as [UNK], whose vector is zero)."""
    concept_of = {word: name for name, words in concepts.items() for word in words}
    words = sorted(set(concept_of) | {w for text in texts for w in WORD.findall(text.lower())})
    vocabulary = {token: number for number, token in enumerate([*SPECIALS, *words])}
    generator = torch.Generator().manual_seed(seed)
    directions = {name: torch.randn(WIDTH, generator=generator) for name in concepts}
    vectors = torch.zeros(len(vocabulary), WIDTH)
    for word in words:
        own = torch.randn(WIDTH, generator=generator)
        concept = concept_of.get(word)
        vectors[vocabulary[word]] = (
            own if concept is None else directions[concept] + CONCEPT_NOISE * own
        )
    with tempfile.TemporaryDirectory() as folder:
        _model(vectors).save_pretrained(folder)
        _tokenizer(vocabulary).save_pretrained(folder)
        pooling = Path(folder) / "1_Pooling" / "config.json"
        pooling.parent.mkdir()
        pooling.write_text(json.dumps(MEAN_POOLING))
        return {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(Path(folder).rglob("*"))
            if path.is_file()
        }


def write_embedder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def _model(vectors: torch.Tensor) -> BertModel:
    config = BertConfig(
        vocab_size=vectors.shape[0],
        hidden_size=WIDTH,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * WIDTH,
        max_position_embeddings=64,
    )
    model = BertModel(config)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.copy_(vectors)
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        for layer in model.encoder.layer:
            for projection in (layer.attention.output.dense, layer.output.dense):
                projection.weight.zero_()
                projection.bias.zero_()
    return model


def _tokenizer(vocabulary: dict[str, int]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
