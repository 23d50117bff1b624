"""The words the tiny model knows: word classes and their grammar, the planted topics, and every
spelling it may say with its prior (see build.py for how they are wired in)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerFast

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


def topic_words(label: str) -> list[tuple[str, str]]:
    """[(word, class)] of a planted topic."""
    return [tuple(entry.split("/")) for entry in PLANTED_TOPICS[label][1].split()]  # type: ignore[misc]


TINY_PLANTED: dict[str, tuple[int, list[str]]] = {
    label: (index, [word for word, _ in topic_words(label)])
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

# Priors, in logits.
PLANTED_PRIOR = -1.0
COMMONNESS_SPREAD = 0.5  # prior of a class's first word minus its last
COMMA_PRIOR = 1.0
END_PRIORS = (3.0, 1.0, 1.0)  # '.', '!', '?': sentences end after ~6-10 words


@dataclass(frozen=True)
class Word:
    """One spelling of a word the model may say: ' river' mid-sentence, 'River' at the start."""

    token: str
    text: str
    word_class: str
    at_start: bool
    prior: float
    topic: str | None


def word_entries() -> list[tuple[str, str, str | None, float]]:
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
            (word, word_class, label, PLANTED_PRIOR) for word, word_class in topic_words(label)
        ]
    return entries


def vocabulary_words() -> list[str]:
    words = [word for word, _, _, _ in word_entries()] + EXTRA_WORDS.split()
    return [*dict.fromkeys(words)]


def spoken_words(tokenizer: PreTrainedTokenizerFast) -> list[Word]:
    """Every token the model may produce, with its class and prior."""
    vocabulary = tokenizer.get_vocab()
    words = []
    for word, word_class, topic, prior in word_entries():
        for text, at_start in ((" " + word, False), (word.capitalize(), True)):
            token = text.replace(" ", "Ġ")
            words.append(Word(token, text, word_class, at_start, prior, topic))
    words += [Word(COMMA, COMMA, "comma", False, COMMA_PRIOR, None)]
    words += [
        Word(mark, mark, "end", False, prior, None)
        for mark, prior in zip(SENTENCE_END, END_PRIORS, strict=True)
    ]
    missing = [word.token for word in words if word.token not in vocabulary]
    assert not missing, f"tokenizer lacks {missing[:5]}"
    return words
