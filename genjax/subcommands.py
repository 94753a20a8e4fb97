"""The subcommands experiments share, each given the experiment's one function:

- `predict_main` (text classifiers: transformer_imdb, bert_imdb): `predict(workdir, texts, attention_path, best)
  -> [Prediction]`; here the arguments, the reviews read from a file, the attention map and the printed lines.
- `sample_main` (language models: charlm_shakespeare, gpt2_lm): `sample(workdir, prompt, length, temperature,
  top_k, num_samples, seed, best) -> [text]`.
- `export_main` (Hugging Face models: bert_imdb, gpt2_lm): `export(workdir, out, best) -> architecture`.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import numpy as np
from flax import traverse_util
from matplotlib.figure import Figure

from genjax.errors import GenjaxError

MAX_SHOWN = 48  # tokens drawn in the attention map


class Prediction(NamedTuple):
    """One text's label, P(positive class), its number of tokens and how many of them the model read."""

    label: str
    probability: float
    tokens: int
    used: int


def read_texts(path: pathlib.Path) -> list[str]:
    """The non-blank lines of a UTF-8 file; GenjaxError naming the line of any byte that is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise GenjaxError(f"cannot read --file {path} ({error.strerror}); give a readable text file") from None
    texts = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise GenjaxError(
                f"--file {path} line {number} is not UTF-8 (byte 0x{line[error.start]:02x} at column {error.start + 1}); "
                "save the file as UTF-8"
            ) from None
        if text.strip():
            texts.append(text)
    if not texts:
        raise GenjaxError(f"--file {path} holds no text; write one review per line")
    return texts


def check_texts(texts: Sequence[str], ids: Sequence[np.ndarray], content: Callable[[np.ndarray], int] = len) -> None:
    """GenjaxError for no texts, or for a text whose ids hold no content (`content(ids)` tokens: 0)."""
    if not texts:
        raise GenjaxError("no text to classify; pass texts as arguments or --file F (one per line)")
    for number, row in enumerate(ids, 1):
        if content(row) == 0:
            raise GenjaxError(f"text {number} is empty (no words to classify); remove it or give a review")


def last_attention(model: nn.Module, params, tokens: np.ndarray) -> np.ndarray:
    """The last block's attention weights of one text, mean over heads: tokens int [L] -> float [S, S] (S: L, plus
    one for a learned [CLS] vector in front). Runs `model` with the einsum kernel, which exposes its weights."""
    model = model.clone(attention_kernel="xla")
    _, state = model.apply({"params": params}, tokens[None], mutable=["intermediates"])
    last = f"block{model.num_layers - 1}"
    found = [v for k, v in traverse_util.flatten_dict(state["intermediates"]).items() if last in k and k[-1] == "attention_weights"]
    return np.asarray(found[0][0][0].mean(0))  # sown as a tuple; [N, S, S] of the one text -> [S, S]


def attention_png(weights: np.ndarray, words: Sequence[str], count: int, path: pathlib.Path) -> None:
    """Draws the attention `weights` [S, S] among the first len(`words`) positions, labelled by `words`, of a text
    of `count` real tokens, into `path`."""
    grid = weights[: len(words), : len(words)]
    figure = Figure(figsize=(0.22 * len(words) + 2, 0.22 * len(words) + 1.5))
    axes = figure.subplots()
    image = axes.imshow(grid, cmap="viridis")
    axes.set_xticks(range(len(words)), words, rotation=90, fontsize=7)
    axes.set_yticks(range(len(words)), words, fontsize=7)
    axes.set(xlabel="attended token", ylabel="query token", title=f"last-layer attention, mean of heads ({len(words)} of {count} positions)")
    figure.colorbar(image, ax=axes, fraction=0.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")


Predict = Callable[[pathlib.Path, Sequence[str], "pathlib.Path | None", bool], list[Prediction]]


def predict_main(argv: Sequence[str], prog: str, predict: Predict, positive: str = "pos") -> None:
    """`prog --workdir W "text" ... [--file F] [--attention-png A] [--best]`: prints one line per text."""
    parser = argparse.ArgumentParser(prog=prog, description="Classify reviews with a trained run.")
    parser.add_argument("--workdir", required=True, type=pathlib.Path, help="the workdir of a training run")
    parser.add_argument("texts", nargs="*", help="reviews to classify")
    parser.add_argument("--file", type=pathlib.Path, help="a UTF-8 text file, one review per line")
    parser.add_argument("--attention-png", type=pathlib.Path, help="write the attention map of the first text here")
    parser.add_argument("--best", action="store_true", help="use the checkpoint kept by --config.best_metric, not the newest")
    flags = parser.parse_args(argv)
    texts = list(flags.texts) + (read_texts(flags.file) if flags.file else [])
    for text, result in zip(texts, predict(flags.workdir, texts, flags.attention_png, flags.best)):
        note = f"  (first {result.used} of {result.tokens} tokens used)" if result.used < result.tokens else ""
        preview = text if len(text) <= 60 else text[:57] + "..."
        print(f"{result.label}\tP({positive})={result.probability:.4f}\t{preview}{note}")
    if flags.attention_png:
        print(f"attention map of text 1 written to {flags.attention_png}")


Sample = Callable[[pathlib.Path, str, int, float, int, int, int, bool], list[str]]


def sample_main(argv: Sequence[str], prog: str, sample: Sample, default_prompt: str = "\n", default_length: int = 500) -> None:
    """`prog --workdir W --prompt P [--length N] [--temperature T] [--top-k K] [--num-samples S] [--seed R] [--best]`:
    prints each continuation after its prompt."""
    parser = argparse.ArgumentParser(prog=prog, description="Generate text from a trained run.")
    parser.add_argument("--workdir", required=True, type=pathlib.Path, help="the workdir of a training run")
    parser.add_argument("--prompt", default=default_prompt, help="text to continue")
    parser.add_argument("--length", type=int, default=default_length, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--best", action="store_true", help="use the checkpoint kept by --config.best_metric, not the newest")
    flags = parser.parse_args(argv)
    if flags.temperature < 0 or flags.top_k < 0 or flags.num_samples < 1:
        raise GenjaxError("--temperature and --top-k must be >= 0 and --num-samples >= 1")
    texts = sample(flags.workdir, flags.prompt, flags.length, flags.temperature, flags.top_k, flags.num_samples, flags.seed, flags.best)
    print("\n\n----\n\n".join(flags.prompt + text for text in texts))


Export = Callable[[pathlib.Path, pathlib.Path, bool], str]


def export_main(argv: Sequence[str], prog: str, export: Export) -> None:
    """`prog --workdir W --out DIR [--best]`: writes the run as a Hugging Face model directory."""
    parser = argparse.ArgumentParser(prog=prog, description="Write a trained run as a Hugging Face model directory.")
    parser.add_argument("--workdir", required=True, type=pathlib.Path, help="the workdir of a training run")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="the model directory to write (new or empty)")
    parser.add_argument("--best", action="store_true", help="use the checkpoint kept by --config.best_metric, not the newest")
    flags = parser.parse_args(argv)
    architecture = export(flags.workdir, flags.out, flags.best)
    print(f"wrote {flags.out}: a {architecture} (config.json, model.safetensors, tokenizer.json) for transformers' from_pretrained")
