"""Hugging Face `tokenizers` for BERT (WordPiece) and GPT-2 (byte-level BPE): loaded from a model directory's
tokenizer.json, or trained on given texts, with genjax's tokenizer interface (genjax/data/text.py)."""

from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from genjax import progress
from genjax.errors import GenjaxError, first_line

FILE = "tokenizer.json"
# BERT's special tokens; [PAD] first, so padding is id 0 as everywhere in genjax
BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT2_END = "<|endoftext|>"


class HFTokenizer:
    """A `tokenizers.Tokenizer` as a genjax tokenizer: `vocab_size`, `encode` (text -> int32 ids [L]), `decode`.

    `encode` adds the special tokens the tokenizer's post-processor adds ([CLS] ... [SEP] for BERT's).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, np.int32)

    def encode_batch(self, texts: Sequence[str], special: bool = True) -> list[np.ndarray]:
        """`encode` of every text, in parallel (the Rust library's threads): int32 ids [L_i] per text; without the
        special tokens ([CLS], [SEP]) when `special` is False."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=special)
        return [np.asarray(encoding.ids, np.int32) for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def id_to_token(self, token_id: int) -> str:
        """The text of one token (e.g. "##ing", "[CLS]")."""
        return self.tokenizer.id_to_token(int(token_id))

    def token_id(self, token: str) -> int:
        """The id of `token` (e.g. "[MASK]"); a `GenjaxError` if the vocabulary lacks it."""
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise GenjaxError(f"the tokenizer has no token '{token}'; use a tokenizer trained with it as a special token")
        return token_id

    def save(self, directory: pathlib.Path) -> None:
        """Writes `directory`/tokenizer.json."""
        self.save_file(directory / FILE)

    def save_file(self, path: pathlib.Path) -> None:
        """Writes the tokenizer to the file `path` (JSON)."""
        self.tokenizer.save(str(path))


def load_tokenizer(directory: pathlib.Path) -> HFTokenizer | None:
    """The tokenizer of `directory`/tokenizer.json, or None when there is none."""
    path = directory / FILE
    if not path.is_file():
        return None
    try:
        return HFTokenizer(tokenizers.Tokenizer.from_file(str(path)))
    except Exception as error:  # tokenizers raises a bare `Exception` for a malformed file
        raise GenjaxError(f"{path} is not a readable tokenizer ({first_line(error)}); download or export it again") from None


def check_vocabulary(tokenizer: HFTokenizer, vocab_size: int, source: str) -> None:
    """Raises unless every id of `tokenizer` indexes the embedding table of `vocab_size` rows
    (a larger table is allowed: published models pad theirs)."""
    if tokenizer.vocab_size > vocab_size:
        raise GenjaxError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the embeddings only {vocab_size} rows; "
            "use the tokenizer the model was trained with"
        )


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> HFTokenizer:
    """BERT's WordPiece tokenizer (BERT normalizer and pre-tokenizer, ## continuations) trained on `texts`;
    `encode` gives [CLS] tokens [SEP]."""
    tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(progress.track(texts, "training tokenizer", unit="texts"), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL)))
    cls, sep = (tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return HFTokenizer(tokenizer)


def train_byte_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """GPT-2's byte-level BPE tokenizer (every byte is a token, so nothing is unknown) trained on `texts`,
    with <|endoftext|> as its one special token."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPT2_END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(progress.track(texts, "training tokenizer", unit="texts"), trainer)
    return HFTokenizer(tokenizer)


def bert_inputs(ids: Sequence[np.ndarray], length: int, pad_id: int) -> np.ndarray:
    """[CLS] ... [SEP] id rows -> int32 [N, length]: a longer row keeps its first `length - 1` ids and its final
    [SEP]; a shorter one is padded with `pad_id`."""
    out = np.full((len(ids), length), pad_id, np.int32)
    for row, sequence in enumerate(ids):
        if len(sequence) > length:
            sequence = np.concatenate([sequence[: length - 1], sequence[-1:]])
        out[row, : len(sequence)] = sequence
    return out


def bert_chunks(ids: Sequence[np.ndarray], length: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
    """Texts' ids (no special tokens) cut into pieces of `length - 2`, each as [CLS] piece [SEP] padded with `pad_id`:
    int32 [number of pieces, length]. Every token of every text is in exactly one row (masked-LM pretraining)."""
    piece = length - 2
    rows = [sequence[start : start + piece] for sequence in ids for start in range(0, len(sequence), piece)]
    return bert_inputs([np.concatenate([[cls_id], row, [sep_id]]).astype(np.int32) for row in rows], length, pad_id)
