"""Text to token ids: a character and a word tokenizer (JSON save/load), LM windows, padding and truncation.

Both tokenizers reserve id 0 for padding and id 1 for unknown input, so any string
encodes (an unseen character or word becomes UNK) and a padded batch never mixes
padding with a real token.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

from genjax import progress
from genjax.data.loader import Batch, EvalBatches, process_rows
from genjax.errors import GenjaxError

PAD, UNK = 0, 1
_PAD_TEXT, _UNK_TEXT = "<pad>", "<unk>"


class CharTokenizer:
    """One id per character of the training text; unseen characters map to UNK."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        self.vocab = [_PAD_TEXT, _UNK_TEXT, *chars]
        self._ids = {c: i for i, c in enumerate(self.vocab) if i >= 2}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """str of length n -> int32 [n]."""
        return np.fromiter((self._ids.get(c, UNK) for c in text), np.int32, len(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; padding is dropped and UNK shows as U+FFFD."""
        return "".join("\ufffd" if i == UNK else self.vocab[i] for i in map(int, ids) if i != PAD)

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.vocab[2:]}


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def word_pieces(text: str) -> list[str]:
    """Lowercased words (letters and digits, with an apostrophe suffix such as "n't"); punctuation, other
    symbols and HTML line breaks are dropped, so a fixed token budget holds more words."""
    return _WORD.findall(_BREAK.sub(" ", text).lower())


class WordTokenizer:
    """The `vocab_size - 2` most frequent training words (ties broken alphabetically); others are UNK."""

    kind = "word"

    def __init__(self, words: Sequence[str]):
        self.vocab = [_PAD_TEXT, _UNK_TEXT, *words]
        self._ids = {w: i for i, w in enumerate(self.vocab) if i >= 2}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "WordTokenizer":
        if vocab_size < 3:
            raise GenjaxError(f"vocab_size={vocab_size} leaves no room for words beside <pad> and <unk>; use e.g. 20000")
        counts = collections.Counter(piece for text in progress.track(texts, "training tokenizer", unit="texts") for piece in word_pieces(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([word for word, _ in ranked[: vocab_size - 2]])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """str -> int32 [number of words]."""
        return np.asarray([self._ids.get(p, UNK) for p in word_pieces(text)], np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> words joined by spaces; padding is dropped."""
        return " ".join(self.vocab[i] for i in map(int, ids) if i != PAD)

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.vocab[2:]}


Tokenizer = CharTokenizer | WordTokenizer


def save_tokenizer(tokenizer: Tokenizer, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False))


def load_tokenizer(path: pathlib.Path) -> Tokenizer:
    """Reads a tokenizer written by `save_tokenizer`; GenjaxError when missing or not a tokenizer."""
    if not path.is_file():
        raise GenjaxError(f"no tokenizer at {path}; train first with this --workdir (the run saves it there)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["kind"] == "char":
            return CharTokenizer(data["chars"])
        if data["kind"] == "word":
            return WordTokenizer(data["words"])
    except (ValueError, KeyError, TypeError):
        pass
    raise GenjaxError(f"{path} is not a genjax tokenizer file; remove it or use a fresh --workdir")


def pad_or_truncate(sequences: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Ragged int sequences -> int32 [N, length]: longer ones cut at `length`, shorter ones padded with PAD."""
    out = np.full((len(sequences), length), PAD, np.int32)
    for row, ids in enumerate(sequences):
        ids = ids[:length]
        out[row, : len(ids)] = ids
    return out


class TokenWindowLoader:
    """Random windows of `context + 1` tokens from one long token stream (inputs and next-token targets).

    Batch `index` draws its window starts from the key `(seed, index)`, so any batch
    is produced without replaying earlier ones and a resumed run sees the same data.
    One "epoch" is `len(tokens) // (global_batch_size * context)` batches.
    """

    def __init__(self, tokens: np.ndarray, context: int, global_batch_size: int, seed: int):
        if len(tokens) < context + 2:
            raise GenjaxError(f"a text of {len(tokens)} tokens is too short for context={context}; lower the context")
        self.tokens = np.asarray(tokens, np.int32)
        self.context = context
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.steps_per_epoch = max(1, len(tokens) // (global_batch_size * context))
        self._rows = process_rows(global_batch_size)
        self._offsets = np.arange(context + 1)

    def batch_at(self, index: int) -> Batch:
        """{'tokens': int32 [local batch, context + 1]}."""
        starts = np.random.default_rng([self.seed, index]).integers(0, len(self.tokens) - self.context - 1, self.global_batch_size)
        return {"tokens": self.tokens[starts[self._rows][:, None] + self._offsets]}


def eval_windows(tokens: np.ndarray, context: int, global_batch_size: int) -> EvalBatches:
    """Non-overlapping windows of `context + 1` tokens (stride `context`) covering the stream, padded with `mask`.

    Every token after the first is predicted exactly once, except a final remainder
    shorter than `context`.
    """
    count = (len(tokens) - 1) // context
    starts = np.arange(count) * context
    windows = np.asarray(tokens, np.int32)[starts[:, None] + np.arange(context + 1)]
    return EvalBatches({"tokens": windows}, global_batch_size)
