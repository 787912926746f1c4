"""What the text tests share: the letters / digits texts that ``tiny:bert`` separates at
once, and settings that make it fit them in about a second."""

from __future__ import annotations

import random

from conftest import make_texts as _make_texts

LETTER_WORDS = [
    "abc",
    "bad",
    "cafe",
    "dead",
    "face",
    "bead",
    "fade",
    "aged",
    "ebb",
    "gag",
    "hag",
    "deaf",
    "beef",
    "head",
    "chef",
    "edge",
]
DIGIT_WORDS = [
    "123",
    "456",
    "789",
    "2024",
    "314",
    "999",
    "1010",
    "42",
    "777",
    "808",
    "5150",
    "31337",
    "606",
    "2718",
    "1618",
    "90210",
]
CLASSES = ["digits", "letters"]

# Settings that make tiny:bert fit the letters/digits data in about a second.
TEXT_FAST = dict(
    epochs=3,
    head_epochs=8,
    batch_size=8,
    eval_batch_size=32,
    lr=1e-3,
    head_lr=5e-2,
    lora_lr=5e-3,
    early_stopping=0,
    num_workers=0,
    device="cpu",
    seed=0,
    val_fraction=0.2,
    truncation="head",
    contrastive=0.0,
    min_steps=0,
)
STRATEGIES = ["feature_extract", "finetune", "partial", "gradual", "lp_ft", "lora"]


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` sentences, alternately of letter words ("letters") and digit words ("digits")."""
    return _make_texts(n, seed, 7, LETTER_WORDS, DIGIT_WORDS, min_words=3)


def random_text(n_chars: int, seed: int = 0) -> str:
    """Exactly ``n_chars`` characters of 2-6 character words (letters and digits)."""
    rng = random.Random(seed)
    out = ""
    while len(out) < n_chars:
        out += "".join(rng.choice("abcdefghij0123") for _ in range(rng.randint(2, 6))) + " "
    return out[: n_chars - 1] + "z"


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]
