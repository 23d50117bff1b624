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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from server.labels import LabelIndex
from server.sae import SparseAutoencoder

SEED = 20240917
HIDDEN = 128
D_SAE = 512
MODEL_ID = "ember-tiny"
SAE_ID = "ember-tiny-sae"

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

# Word classes, and which may follow which (anything not listed is forbidden).
WORDS = {
    "determiner": "the a this that these those my your our their his her some every no each "
    "another any",
    "pronoun": "you we they he she it someone everyone nobody",
    "noun": "time day night year world life hand eye home house door room city road river sea "
    "sky sun tree forest mountain hill garden flower bird dog horse fish friend family child "
    "mother father brother sister teacher student doctor king queen people man woman boy girl "
    "book letter story word name idea question answer problem reason way place school town "
    "village island bridge window table chair bed car train boat light fire water stone gold "
    "silver heart mind dream voice morning evening summer winter spring field lake street market "
    "bicycle poem capital france paper picture game team war peace money work job power art "
    "history science nature animal country ocean beach journey gift secret shadow",
    "verb": "is was sees saw makes made takes took finds found walks walked runs ran thinks "
    "thought knows knew wants loves likes gives gave tells told keeps holds brings reads writes "
    "speaks opens closes waits helps looks feels seems becomes grows stays remembers learns "
    "builds carries follows leaves calls",
    "adjective": "good new old great little small big long short high young bright dark warm cold "
    "quiet loud green blue red white black golden gentle strange simple clear early late kind "
    "brave wise quick slow soft famous upright beautiful tiny ancient free heavy empty full",
    "adverb": "very really always never often still again soon here there now today together "
    "slowly quickly perhaps almost also",
    "preposition": "in on at by with from to of for about under over through near behind into "
    "across along",
    "conjunction": "and but or so because while when",
    "greeting": "hello hi yes oh well please thanks",
}
COMMA, SENTENCE_END = ",", (".", "!", "?")
FOLLOWERS = {
    "start": ("determiner", "pronoun", "noun", "adverb", "greeting", "preposition"),
    "determiner": ("adjective", "noun"),
    "pronoun": ("verb", "adverb"),
    "noun": ("verb", "preposition", "conjunction", "comma", "end"),
    "verb": ("determiner", "adjective", "adverb", "preposition", "pronoun", "end"),
    "adjective": ("noun", "conjunction", "comma", "end"),
    "adverb": ("verb", "adjective", "comma", "end"),
    "preposition": ("determiner", "noun", "pronoun"),
    "conjunction": ("determiner", "pronoun", "noun", "adverb"),
    "greeting": ("comma", "end"),
    "comma": ("determiner", "pronoun", "conjunction", "adverb", "noun"),
    "end": ("eos",),
}
CLASSES = tuple(FOLLOWERS)  # word classes plus start/comma/end: one reserved dimension each

# label -> (feature index, "word/class ..."). The first entry is the showcase.
PLANTED_TOPICS: dict[str, tuple[int, str]] = {
    "pirate speech": (
        37,
        "ahoy/greeting matey/noun arr/greeting treasure/noun plunder/noun ye/pronoun",
    ),
    "formal tone": (
        102,
        "furthermore/adverb sincerely/adverb regards/noun therefore/adverb kindly/adverb "
        "respectfully/adverb",
    ),
    "cats and kittens": (
        151,
        "cat/noun cats/noun kitten/noun meow/greeting purr/noun whiskers/noun",
    ),
    "weather: rain, snow and storms": (
        203,
        "rain/noun sunny/adjective cloudy/adjective storm/noun wind/noun snow/noun",
    ),
    "food and cooking": (
        264,
        "pizza/noun bread/noun cheese/noun soup/noun delicious/adjective recipe/noun",
    ),
    "outer space and astronomy": (
        318,
        "stars/noun planet/noun rocket/noun moon/noun galaxy/noun orbit/noun",
    ),
    "music and singing": (
        377,
        "song/noun guitar/noun melody/noun rhythm/noun piano/noun sing/verb",
    ),
    "happiness and joy": (
        419,
        "happy/adjective joy/noun smile/noun wonderful/adjective delighted/adjective "
        "cheerful/adjective",
    ),
    "sadness and grief": (
        458,
        "sad/adjective tears/noun lonely/adjective sorrow/noun gloomy/adjective grief/noun",
    ),
    "computers and programming": (
        497,
        "computer/noun code/noun software/noun python/noun bug/noun program/noun",
    ),
}


def _topic_words(label: str) -> list[tuple[str, str]]:
    """[(word, class)] of a planted topic."""
    return [tuple(entry.split("/")) for entry in PLANTED_TOPICS[label][1].split()]  # type: ignore[misc]


TINY_PLANTED: dict[str, tuple[int, list[str]]] = {
    label: (index, [word for word, _ in _topic_words(label)])
    for label, (index, _) in PLANTED_TOPICS.items()
}
# Words the chat template and the server's calibration prompts use; tokenized whole, never said.
EXTRA_WORDS = "system user assistant explain two sentences how what why"

CLASS_PLURALS = {
    "determiner": "determiners",
    "pronoun": "pronouns",
    "noun": "nouns",
    "verb": "verbs",
    "adjective": "adjectives",
    "adverb": "adverbs",
    "preposition": "prepositions",
    "conjunction": "conjunctions",
    "greeting": "greetings and interjections",
}

# Sizes in residual-stream units (the transformer's own residual has norm ~0.2) and in logits.
ORDINARY_EMBEDDING_STD = 0.06
RESERVED_EMBEDDING = 0.4  # class, bias and topic components of an embedding
ORDINARY_UNEMBEDDING_STD = 0.15  # context-dependent word choice: ~1 logit of spread
FORBIDDEN_LOGIT = -8.0
WRONG_FORM_LOGIT = -16.0
EOS_LOGIT = 4.0
UNSAID_PRIOR = -10.0  # sub-word pieces, special tokens, wrong-case forms
PLANTED_PRIOR = -1.0
COMMONNESS_SPREAD = 0.5  # prior of a class's first word minus its last
COMMA_PRIOR = 1.0
END_PRIORS = (3.0, 1.0, 1.0)  # '.', '!', '?': sentences end after ~6-10 words
PLANTED_UNEMBEDDING = 2.0  # logit gain per unit of normalised planted component
PLANTED_ENCODER_GAIN = 8.0
GROUP_ENCODER_GAIN = 3.0
CALIBRATION_LENGTH = 24


@dataclass(frozen=True)
class TinyParts:
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    sae: SparseAutoencoder
    labels: LabelIndex
    layer: int


@dataclass(frozen=True)
class _Layout:
    """Which hidden dimension holds what (see the module docstring)."""

    ordinary: slice
    classes: dict[str, int]
    bias: int
    topic_in: dict[str, int]  # written by a topic's words' embeddings
    topic_out: dict[str, int]  # read by their unembeddings

    @classmethod
    def build(cls) -> _Layout:
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


@dataclass(frozen=True)
class _Word:
    """One spelling of a word the model may say: ' river' mid-sentence, 'River' at the start."""

    token: str
    text: str
    word_class: str
    at_start: bool
    prior: float
    topic: str | None


def build_tiny_parts() -> TinyParts:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        rng = random.Random(SEED)
        layout = _Layout.build()
        tokenizer = _build_tokenizer()
        words = _spoken_words(tokenizer)
        model = _build_model(tokenizer, words, layout)
        sae, labels = _build_sae(model, tokenizer, words, layout, rng)
    return TinyParts(model, tokenizer, sae, labels, layer=model.config.num_hidden_layers - 1)


# ---- tokenizer ---------------------------------------------------------------------------------


def _word_entries() -> list[tuple[str, str, str | None, float]]:
    """(word, class, planted topic, prior) of every word the model may say. Each class list
    starts with its commonest words, which get the higher priors."""
    entries: list[tuple[str, str, str | None, float]] = []
    for word_class, group in WORDS.items():
        words = group.split()
        entries += [
            (word, word_class, None, -COMMONNESS_SPREAD * position / len(words))
            for position, word in enumerate(words)
        ]
    for label in PLANTED_TOPICS:
        entries += [
            (word, word_class, label, PLANTED_PRIOR) for word, word_class in _topic_words(label)
        ]
    return entries


def _vocabulary_words() -> list[str]:
    words = [word for word, _, _, _ in _word_entries()] + EXTRA_WORDS.split()
    return [*dict.fromkeys(words)]


def _build_tokenizer() -> PreTrainedTokenizerFast:
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
        for word in _vocabulary_words()
        for spelling in (word, " " + word, word.capitalize(), " " + word.capitalize())
    ]
    tokenizer.train_from_iterator(spellings, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS
    )
    wrapped.add_special_tokens({"additional_special_tokens": [HEADER_START, HEADER_END]})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _spoken_words(tokenizer: PreTrainedTokenizerFast) -> list[_Word]:
    """Every token the model may produce, with its class and prior."""
    vocabulary = tokenizer.get_vocab()
    words = []
    for word, word_class, topic, prior in _word_entries():
        for text, at_start in ((" " + word, False), (word.capitalize(), True)):
            token = text.replace(" ", "Ġ")
            words.append(_Word(token, text, word_class, at_start, prior, topic))
    words += [_Word(COMMA, COMMA, "comma", False, COMMA_PRIOR, None)]
    words += [
        _Word(mark, mark, "end", False, prior, None)
        for mark, prior in zip(SENTENCE_END, END_PRIORS, strict=True)
    ]
    missing = [word.token for word in words if word.token not in vocabulary]
    assert not missing, f"tokenizer lacks {missing[:5]}"
    return words


# ---- model -------------------------------------------------------------------------------------


def _build_model(
    tokenizer: PreTrainedTokenizerFast, words: list[_Word], layout: _Layout
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
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, words: list[_Word], layout: _Layout
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


def _spelling_groups(words: list[_Word]) -> list[tuple[list[str], str, str | None]]:
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
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, words: list[_Word], layout: _Layout
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


def _transition(previous: str, followers: tuple[str, ...], word: _Word) -> float:
    """Logit for `word` after a token of class `previous`. A capitalised form mid-sentence is
    ruled out harder than a class out of order, so strong steering bends grammar, not spelling."""
    if word.at_start != (previous == "start"):
        return WRONG_FORM_LOGIT
    return 0.0 if word.word_class in followers else FORBIDDEN_LOGIT


def _reserved_scale(layout: _Layout) -> float:
    """What a reserved component of RESERVED_EMBEDDING becomes after the final RMSNorm, roughly:
    the residual holds three such components (class, bias, maybe a topic) plus the ordinary part."""
    ordinary_norm = ORDINARY_EMBEDDING_STD * layout.ordinary.stop**0.5
    residual_norm = (3 * RESERVED_EMBEDDING**2 + ordinary_norm**2 + 0.2**2) ** 0.5
    return RESERVED_EMBEDDING / residual_norm * HIDDEN**0.5


# ---- SAE ---------------------------------------------------------------------------------------


def _build_sae(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    words: list[_Word],
    layout: _Layout,
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
    vocabulary: dict[str, int], words: list[_Word]
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
    words: list[_Word],
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
    words: list[_Word],
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
