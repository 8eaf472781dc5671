"""A locally generated English-like corpus and byte tokenizer for the default workload.

Short templated stories with agreement, recurring characters and counting, so a small LM learns fast.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from tensile import contract

from .shards import TokenDataset, TokenShardWriter

# (name, subject pronoun); each story reuses a few of these so a model can learn to copy them.
_CHARACTERS = [
    ("Ada", "she"), ("Ben", "he"), ("Cora", "she"), ("Dan", "he"), ("Eli", "he"), ("Fay", "she"),
    ("Gus", "he"), ("Hana", "she"), ("Ivo", "he"), ("June", "she"), ("Kai", "he"), ("Lena", "she"),
    ("Milo", "he"), ("Nora", "she"), ("Otto", "he"), ("Pia", "she"), ("Quin", "he"), ("Rosa", "she"),
    ("Sam", "he"), ("Tara", "she"), ("Uma", "she"), ("Vic", "he"), ("Wes", "he"), ("Yara", "she"),
]
# (singular, plural) for every countable word, so number agreement is learnable.
_NOUNS = [
    ("apple", "apples"), ("box", "boxes"), ("bird", "birds"), ("stone", "stones"), ("book", "books"),
    ("cup", "cups"), ("shell", "shells"), ("coin", "coins"), ("kite", "kites"), ("pear", "pears"),
    ("boat", "boats"), ("lamp", "lamps"), ("key", "keys"), ("hat", "hats"), ("brush", "brushes"),
    ("fox", "foxes"), ("cat", "cats"), ("dog", "dogs"), ("egg", "eggs"), ("map", "maps"),
    ("ring", "rings"), ("drum", "drums"), ("leaf", "leaves"), ("mouse", "mice"), ("child", "children"),
    ("glass", "glasses"), ("peach", "peaches"), ("rope", "ropes"), ("bell", "bells"), ("flower", "flowers"),
    ("letter", "letters"), ("basket", "baskets"), ("candle", "candles"), ("feather", "feathers"),
    ("wheel", "wheels"),
]
_PROFESSIONS = [
    ("farmer", "farmers"), ("teacher", "teachers"), ("baker", "bakers"), ("sailor", "sailors"),
    ("painter", "painters"), ("doctor", "doctors"), ("singer", "singers"), ("guard", "guards"),
    ("miller", "millers"), ("weaver", "weavers"), ("hunter", "hunters"), ("cook", "cooks"),
]
# (third person singular, plural) verb forms: the subject decides which one is grammatical.
_TRANSITIVE_VERBS = [
    ("sees", "see"), ("finds", "find"), ("carries", "carry"), ("paints", "paint"), ("wants", "want"),
    ("likes", "like"), ("washes", "wash"), ("builds", "build"), ("opens", "open"), ("hides", "hide"),
    ("sells", "sell"), ("buys", "buy"), ("drops", "drop"), ("holds", "hold"), ("watches", "watch"),
    ("follows", "follow"), ("helps", "help"), ("calls", "call"), ("fixes", "fix"), ("keeps", "keep"),
]
_INTRANSITIVE_VERBS = [
    ("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"), ("waits", "wait"), ("laughs", "laugh"),
    ("walks", "walk"), ("jumps", "jump"), ("rests", "rest"), ("dances", "dance"), ("smiles", "smile"),
    ("works", "work"), ("reads", "read"), ("cries", "cry"), ("listens", "listen"), ("hurries", "hurry"),
]
_ADJECTIVES = [
    "red", "blue", "green", "small", "big", "old", "new", "bright", "dark", "soft", "heavy", "light",
    "round", "tall", "short", "warm", "cold", "quiet", "loud", "happy", "sad", "clean", "dusty", "shiny",
    "wooden", "golden", "silver", "yellow", "brown", "white", "black", "tiny", "huge", "strange", "lovely",
]
_PLACES = [
    "the garden", "the market", "the river", "the kitchen", "the forest", "the harbor", "the school",
    "the hill", "the barn", "the bridge", "the library", "the square", "the field", "the tower",
    "the cave", "the shop", "the beach", "the mill", "the road", "the village",
]
_PREPOSITIONS = ["in", "near", "behind", "under", "beside", "above", "at", "by"]
_ADVERBS = [
    "slowly", "quickly", "quietly", "happily", "sadly", "again", "today", "loudly", "gently", "carefully",
    "often", "early", "late", "alone", "together",
]
_NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
]


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, and every string round-trips."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: Sequence[int]) -> str:
        for token in tokens:
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token {token} is outside the byte vocabulary [0, {self.vocab_size})")
        return bytes(tokens).decode("utf-8", errors="replace")


def _counted(count: int, noun: tuple[str, str]) -> str:
    return f"{_NUMBER_WORDS[count]} {noun[0] if count == 1 else noun[1]}"


def _story(rng: random.Random, day: int) -> str:
    """One paragraph: a day number, two recurring characters, a place, and a running count."""
    (hero, pronoun), (friend, _) = rng.sample(_CHARACTERS, 2)
    place = rng.choice(_PLACES)
    treasure = rng.choice(_NOUNS)
    owned = rng.randint(1, 3)
    sentences = [
        f"Day {day}.",
        f"{hero} is {rng.choice(_PREPOSITIONS)} {place} with {friend}.",
        f"{pronoun.capitalize()} has {_counted(owned, treasure)}.",
    ]
    for _ in range(rng.randint(3, 6)):
        template = rng.randrange(8)
        noun = rng.choice(_NOUNS)
        verb = rng.choice(_TRANSITIVE_VERBS)
        if template == 0:
            adjective, preposition = rng.choice(_ADJECTIVES), rng.choice(_PREPOSITIONS)
            sentences.append(f"{hero} {verb[0]} the {adjective} {noun[0]} {preposition} {place}.")
        elif template == 1:
            count = rng.randint(2, 9)
            sentences.append(f"{hero} and {friend} {verb[1]} {_counted(count, noun)}.")
        elif template == 2:
            intransitive = rng.choice(_INTRANSITIVE_VERBS)
            if rng.random() < 0.5:
                sentences.append(f"{pronoun.capitalize()} {intransitive[0]} {rng.choice(_ADVERBS)}.")
            else:
                sentences.append(f"They {intransitive[1]} {rng.choice(_ADVERBS)}.")
        elif template == 3:
            profession = rng.choice(_PROFESSIONS)
            if rng.random() < 0.5:
                sentences.append(f"The {profession[0]} {verb[0]} {rng.choice((hero, friend))}.")
            else:
                sentences.append(f"The {profession[1]} {verb[1]} {rng.choice((hero, friend))}.")
        elif template == 4:
            start = rng.randint(1, 40)
            numbers = ", ".join(str(start + i) for i in range(rng.randint(3, 6)))
            sentences.append(f"{hero} counts: {numbers}.")
        elif template == 5 and owned < len(_NUMBER_WORDS) - 1:
            owned += 1
            sentences.append(f"{hero} finds one more {treasure[0]}.")
            sentences.append(f"Now {pronoun} has {_counted(owned, treasure)}.")
        elif template == 6:
            if rng.random() < 0.5:
                sentences.append(f"The {noun[0]} is {rng.choice(_ADJECTIVES)}.")
            else:
                sentences.append(f"The {noun[1]} are {rng.choice(_ADJECTIVES)}.")
        else:
            sentences.append(f"{friend} {verb[0]} {hero} {rng.choice(_ADVERBS)}.")
    sentences.append(f"At night {hero} has {_counted(owned, treasure)}.")
    return " ".join(sentences) + "\n"


def generate_text(*, seed: int, min_length: int) -> str:
    """Deterministic ASCII text of at least min_length characters; stories count days upward."""
    rng = random.Random(seed)
    stories: list[str] = []
    length = 0
    day = 1
    while length < min_length:
        story = _story(rng, day)
        stories.append(story)
        length += len(story)
        # Books of a few dozen days, so day numbers both count up and stay small.
        day = 1 if rng.random() < 0.03 else day + 1
    return "".join(stories)


def generate_corpus(
    url: str, *, num_samples: int, seq_len: int, seed: int, samples_per_shard: int = 4096,
    held_out_samples: int = 0,
) -> TokenDataset:
    """Generates text, tokenises it bytewise, packs it into samples of seq_len + 1 and writes a dataset.

    With held_out_samples, the text goes on past the corpus's last sample and the next samples
    go to `<url>/heldout`, an evaluation split no training sample overlaps. The text is generated
    in one stream, so the training samples are the same bytes (the same data version) either way."""
    for name, value in (("num_samples", num_samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(held_out_samples, bool) or not isinstance(held_out_samples, int) or held_out_samples < 0:
        raise ValueError(f"held_out_samples must be a non-negative integer, got {held_out_samples!r}")
    sample_length = seq_len + 1
    total = num_samples + held_out_samples
    text = generate_text(seed=seed, min_length=total * sample_length)
    # The text is ASCII, so its UTF-8 bytes are exactly ByteTokenizer's token ids.
    samples = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:total * sample_length].reshape(total, sample_length)
    # The held-out split first: the training set's index.json, written last, says both are there.
    parts = [(f"{url.rstrip('/')}/{contract.HELD_OUT_DIRECTORY}", samples[num_samples:])] if held_out_samples else []
    parts.append((url, samples[:num_samples]))
    for destination, rows in parts:
        with TokenShardWriter(destination, seq_len=seq_len, vocab_size=ByteTokenizer.vocab_size,
                              samples_per_shard=samples_per_shard) as writer:
            for sample in rows:
                writer.write(sample)
    return TokenDataset(url)
