"""The tiny model's tokenizer: byte-level BPE over its word list, with a Llama-3-style chat
template."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from server.model.tiny.vocabulary import vocabulary_words

BOS, EOS, HEADER_START, HEADER_END = (
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the word list, so every listed word (lower case or capitalised,
    with or without a leading space) is one token and any other text still encodes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[BOS, EOS, HEADER_START, HEADER_END],
    )
    spellings = [
        spelling
        for word in vocabulary_words()
        for spelling in (word, " " + word, word.capitalize(), " " + word.capitalize())
    ]
    tokenizer.train_from_iterator(spellings, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS
    )
    wrapped.add_special_tokens({"additional_special_tokens": [HEADER_START, HEADER_END]})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
