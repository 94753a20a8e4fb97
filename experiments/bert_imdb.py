"""IMDb sentiment with BERT: masked-LM pretraining on IMDb's own reviews, fine-tuning a classifier, prediction and
export to Hugging Face `transformers`.

Pretrain:  python -m experiments.bert_imdb pretrain --workdir runs/bert_pre [--config.KEY=VALUE ...]
Fine-tune: python -m experiments.bert_imdb --workdir runs/bert [--config.init_from=runs/bert_pre | DIR | hf:NAME]
Predict:   python -m experiments.bert_imdb predict --workdir runs/bert "a review ..." [--file F] [--attention-png A] [--best]
Export:    python -m experiments.bert_imdb export --workdir runs/bert --out DIR [--best]
           (a fine-tuning workdir gives a BertForSequenceClassification, a pretraining one a BertForMaskedLM)

Splits (issue 29): validation is the last 2,500 reviews of IMDb's `train` (train[22500:]), never trained on by
either phase. Pretraining reads train[:22500] and the `unsupervised` reviews but their last 2,500, which are its
test split; it never reads `test`. Fine-tuning trains on train[:22500], keeps the best validation accuracy in
<workdir>/best_checkpoints (`predict --best`, `export --best`) and reports the final state's test accuracy,
precision, recall, F1, ROC-AUC and ROC curve (<workdir>/roc_curve.png) on all 25,000 test reviews.

Budget: the defaults are sized for the whole pipeline to run in 90 minutes on a 2-core CPU; there it took 77 (pretraining
56 min at about 1 step/s, fine-tuning 21 min at 1.5 steps/s, at 5010a8d), where a bert-mini step takes 3-4 times as
long. Pretraining rows have the fine-tuning length, so every position the classifier reads has been pretrained.
Results there: pretraining's validation masked-LM loss sat near 6.2 until step 2,000 (6.22 at 1,000, 6.03 at 2,000)
and fell fast at the end (5.75 at 2,500, 5.61 at 3,000); fine-tuned from it, 82.05% test accuracy; the same
fine-tune from scratch 84.64%: this short pretraining hurts (the 90% target is not reached).

Starting points (`--config.init_from`): "" trains from scratch with a WordPiece tokenizer trained on the training
reviews; a pretraining workdir gives its newest checkpoint's encoder and its tokenizer (the head starts fresh); a
Hugging Face model directory or hf:NAME (`huggingface_hub`, needs internet) gives its weights and tokenizer.json.
Each workdir keeps its tokenizer.json and model.json (the config.json of its model), read by predict and export.
A bad starting point stops with one line before anything is written to the workdir.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from genjax import cli, loop
from genjax import config as config_lib
from genjax.data import sources
from genjax.data.loader import ShuffledArrayLoader, eval_splits
from genjax.data.reviews import review_experiment, training_reviews
from genjax.data.splits import hold_out
from genjax.errors import GenjaxError
from genjax.hf import files
from genjax.hf.config import model_from_config
from genjax.hf.tokenizer import BERT_SPECIAL, HFTokenizer, bert_chunks, bert_inputs, train_wordpiece
from genjax.hf.workdir import MODEL_FILE, WORKDIR, export_workdir, load_hf_start, saved_model, source_kind, workdir_files
from genjax.models.bert import BertClassifier, BertMaskedLM
from genjax.models.layer_norm import uses_hand_backward
from genjax.models.sizes import size
from genjax.optim import make_optimizer, optimizer_config
from genjax.precision import compute_dtype
from genjax.subcommands import MAX_SHOWN, Prediction, attention_png, check_texts, export_main, last_attention, predict_main
from genjax.state import eval_params
from genjax.task import TEST, VALIDATION, Experiment, loop_config, num_train_steps
from genjax.tasks.masked_lm import MaskedLMTask
from genjax.tasks.text_classifier import TextClassifierTask, attention_kernel

NAME, PRETRAIN_NAME = "bert_imdb", "bert_imdb_pretrain"
CLASSIFIER, MASKED_LM = "BertForSequenceClassification", "BertForMaskedLM"
ARCHITECTURES = {NAME: CLASSIFIER, PRETRAIN_NAME: MASKED_LM}
LABELS = ("neg", "pos")
PROG = "python -m experiments.bert_imdb"


def _config(**loop_fields: Any) -> ml_collections.ConfigDict:
    """The fields both phases share."""
    config = loop_config(**loop_fields)
    config.dataset = "imdb_reviews"
    config.validation_examples = 2500  # train[22500:]: the validation split of both phases, never trained on
    config.train_examples = 0  # 0: all of train[:22500]; > 0: its first n (smoke runs and tests)
    config.vocab_size = 16384  # WordPiece tokens when the tokenizer is trained here (from scratch)
    config.grad_accum_steps = 1
    config.model = ml_collections.ConfigDict(
        dict(
            size="bert-tiny",  # genjax/models/sizes.py; from scratch only (a starting point brings its own model)
            dropout=0.1,
            attention_kernel="auto",  # auto (blocked on CPU, xla elsewhere) | blocked | xla | fused
            remat="none",  # none | full | dots: what each block keeps for the backward pass (genjax/models/transformer.py)
            backward="auto",  # auto (hand-written LayerNorm/rotary backward passes on CPU, autodiff elsewhere) | hand | autodiff (also forward mode)
        )
    )
    return config


def get_config() -> ml_collections.ConfigDict:
    """Fine-tuning `BertClassifier` on the labelled reviews."""
    config = _config(num_epochs=2, batch_size=32, eval_batch_size=250, log_every=50, eval_every=0, checkpoint_every=500,
                     best_metric="accuracy", best_mode="max")
    config.init_from = ""  # "" | a pretraining workdir | a Hugging Face model directory | hf:NAME
    config.max_len = 256  # tokens per review, [CLS] and [SEP] included; longer reviews keep their start
    config.test_examples = 0  # 0: all 25,000 test reviews; > 0: the first n (smoke runs and tests)
    config.optimizer = optimizer_config(
        name="adamw", learning_rate=1e-4, schedule="warmup_cosine", warmup_steps=100, end_lr_factor=0.0, weight_decay=0.01,
        grad_clip_norm=1.0,
    )
    return config


def get_pretrain_config() -> ml_collections.ConfigDict:
    """Masked-LM pretraining of `BertMaskedLM` on train[:22500] and the unsupervised reviews."""
    config = _config(num_train_steps=3000, batch_size=32, eval_batch_size=256, log_every=50, eval_every=500, checkpoint_every=500)
    config.max_len = 256  # tokens per pretraining row: reviews are cut into pieces of max_len - 2 within [CLS] ... [SEP]
    config.unsupervised_examples = 0  # 0: all unsupervised reviews but the test slice; > 0: the first n
    config.test_examples = 2500  # the last 2,500 unsupervised reviews: the pretraining's test split
    config.mask_rate = 0.15
    config.optimizer = optimizer_config(
        name="adamw", learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=200, end_lr_factor=0.1, weight_decay=0.01,
        grad_clip_norm=1.0,
    )
    return config


# ---- models and where they start ---------------------------------------------------------------------------


@dataclasses.dataclass
class Start:
    """What a run trains: the `model`, its `tokenizer`, and the starting parameters (None: a fresh initialisation;
    a dict lacking the head: a pretrained encoder with a fresh head)."""

    model: nn.Module
    tokenizer: HFTokenizer
    params: dict[str, Any] | None = None


def for_training(config: ml_collections.ConfigDict, model: nn.Module) -> nn.Module:
    """`model` with the run's dropout, attention kernel, remat and computation dtype; GenjaxError when `config.max_len`
    exceeds its positions."""
    if config.max_len > model.max_len:
        raise GenjaxError(f"max_len={config.max_len} exceeds the model's {model.max_len} positions; pass --config.max_len={model.max_len}")
    m = config.model
    return model.clone(
        dropout_rate=m.dropout, attention_kernel=attention_kernel(m.attention_kernel), hand_backward=uses_hand_backward(m.backward),
        remat=m.remat, dtype=compute_dtype(config.dtype),
    )


def fresh_model(config: ml_collections.ConfigDict, architecture: str, tokenizer: HFTokenizer) -> nn.Module:
    """The `config.model.size` BERT of `architecture` over the tokenizer's vocabulary."""
    fields = {**size(config.model.size), "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.token_id("[PAD]")}
    return (BertClassifier if architecture == CLASSIFIER else BertMaskedLM)(**fields)


def resumed(workdir: pathlib.Path, architecture: str) -> Start | None:
    """The model and tokenizer a workdir with checkpoints already trains (its state comes from the checkpoint)."""
    if not (workdir / "checkpoints").is_dir() or not (workdir / MODEL_FILE).is_file():
        return None
    model, tokenizer, _ = saved_model(workdir, architecture)
    return Start(model, tokenizer)


def pretrained_encoder(pretraining: pathlib.Path) -> Start:
    """A classifier on the encoder of the newest checkpoint of the pretraining workdir (its tokenizer; a fresh head)."""
    config = config_lib.load_saved_config(get_pretrain_config(), pretraining, PRETRAIN_NAME)
    masked_lm, tokenizer, model_config = saved_model(pretraining, MASKED_LM)
    task = make_pretrain_task(config, masked_lm, tokenizer, max(config.num_train_steps, 1))
    state = loop.restore_trained_state(pretraining, PRETRAIN_NAME, task, {"tokens": np.zeros((1, config.max_len), np.int32)})
    encoder = {k: v for k, v in jax.device_get(eval_params(state)).items() if not k.startswith("mlm_")}
    return Start(model_from_config(model_config, CLASSIFIER, str(pretraining / MODEL_FILE)), tokenizer, encoder)


def classifier_start(config: ml_collections.ConfigDict, workdir: pathlib.Path, train_texts: Sequence[str]) -> Start:
    """The classifier a fine-tuning run trains, from `config.init_from` (see the module docstring)."""
    start = resumed(workdir, CLASSIFIER)
    if start is not None:
        return start
    if not config.init_from:
        tokenizer = train_wordpiece(train_texts, config.vocab_size)
        return Start(fresh_model(config, CLASSIFIER, tokenizer), tokenizer)
    kind = source_kind(config.init_from)
    if kind == WORKDIR:
        record = files.read_json(pathlib.Path(config.init_from) / "config.json")
        if record["experiment"] != PRETRAIN_NAME:
            raise GenjaxError(
                f"init_from '{config.init_from}' is a workdir of experiment '{record['experiment']}'; "
                f"give a workdir of `{PROG} pretrain`, a Hugging Face model directory or hf:NAME"
            )
        return pretrained_encoder(pathlib.Path(config.init_from))
    rng = jax.random.fold_in(jax.random.key(config.seed), 1)  # the fresh head of a checkpoint without one
    pretrained = load_hf_start(config.init_from, CLASSIFIER, rng)
    if pretrained.model.num_classes != len(LABELS):
        raise GenjaxError(f"{config.init_from} classifies into {pretrained.model.num_classes} classes, not {len(LABELS)}; start from its encoder (a BertForMaskedLM or BertModel checkpoint)")
    return Start(pretrained.model, pretrained.tokenizer, pretrained.params)


# ---- fine-tuning ---------------------------------------------------------------------------------------------


def make_task(config: ml_collections.ConfigDict, start: Start, total_steps: int) -> TextClassifierTask:
    return TextClassifierTask(config, make_optimizer(config.optimizer, total_steps), for_training(config, start.model), start.params)


def encode(start: Start, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Reviews -> int32 [N, max_len]: [CLS] tokens [SEP], cut or padded."""
    return bert_inputs(start.tokenizer.encode_batch(texts), max_len, start.model.pad_id)


def build(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Experiment:
    """Data, starting point, optimizer and task of the fine-tuning run in `workdir` (nothing is written)."""
    training = training_reviews(config)
    start = classifier_start(config, workdir, training[0][0])
    return review_experiment(
        config, NAME, training, lambda texts: encode(start, texts, config.max_len),
        lambda steps: make_task(config, start, steps), workdir_files(start.model, CLASSIFIER, start.tokenizer),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Fine-tunes (resuming if possible); returns the test metrics."""
    workdir = pathlib.Path(workdir)
    return loop.train_and_evaluate(config, workdir, build(config, workdir))


# ---- pretraining ---------------------------------------------------------------------------------------------


def make_pretrain_task(config: ml_collections.ConfigDict, model: nn.Module, tokenizer: HFTokenizer, total_steps: int) -> MaskedLMTask:
    special = [tokenizer.token_id(token) for token in BERT_SPECIAL]
    return MaskedLMTask(
        config, make_optimizer(config.optimizer, total_steps), for_training(config, model), tokenizer.token_id("[MASK]"), special, config.mask_rate
    )


def pretraining_texts(config: ml_collections.ConfigDict) -> tuple[list[str], list[str], list[str]]:
    """(texts trained on: train[:22500] + unsupervised but its test slice, validation: train[22500:], test: the
    last `test_examples` unsupervised reviews); IMDb's `test` is never read."""
    (train_texts, _), validation = training_reviews(config)
    unlabelled = sources.labelled_texts(config.dataset, "unsupervised", config.data_dir, config.download)[0]
    unlabelled, test = hold_out({"text": unlabelled}, config.test_examples, "test_examples")
    limit = config.unsupervised_examples if config.unsupervised_examples > 0 else len(unlabelled["text"])
    return list(train_texts) + unlabelled["text"][:limit], validation["text"], test["text"]


def build_pretraining(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Experiment:
    """Data, tokenizer (trained on the texts trained on), optimizer and task of the pretraining run in `workdir`."""
    texts, validation, test = pretraining_texts(config)
    start = resumed(workdir, MASKED_LM)
    if start is None:
        tokenizer = train_wordpiece(texts, config.vocab_size)
        start = Start(fresh_model(config, MASKED_LM, tokenizer), tokenizer)
    ids = {"[CLS]": start.tokenizer.token_id("[CLS]"), "[SEP]": start.tokenizer.token_id("[SEP]")}

    def rows(split_texts: Sequence[str]) -> dict[str, np.ndarray]:
        pieces = start.tokenizer.encode_batch(split_texts, special=False)
        return {"tokens": bert_chunks(pieces, config.max_len, ids["[CLS]"], ids["[SEP]"], start.model.pad_id)}

    train, held_out = rows(texts), {VALIDATION: rows(validation), TEST: rows(test)}
    loader = ShuffledArrayLoader(train, config.batch_size, seed=config.seed)
    steps = num_train_steps(config, loader.steps_per_epoch)
    return Experiment(
        name=PRETRAIN_NAME,
        task=make_pretrain_task(config, start.model, start.tokenizer, steps),
        train_data=loader,
        eval_data=eval_splits(held_out, config.eval_batch_size),
        num_train_steps=steps,
        workdir_files=workdir_files(start.model, MASKED_LM, start.tokenizer),
        data_signature={"dataset": config.dataset, "train_rows": len(train["tokens"]), **{f"{k}_rows": len(v["tokens"]) for k, v in held_out.items()}},
    )


def pretrain(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Masked-LM pretraining (resuming if possible); returns the test-slice metrics (loss and accuracy per masked token)."""
    workdir = pathlib.Path(workdir)
    return loop.train_and_evaluate(config, workdir, build_pretraining(config, workdir))


# ---- predict and export --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """A finished run's config, model, tokenizer, model.json fields, task and evaluation parameters."""

    config: ml_collections.ConfigDict
    architecture: str
    model: nn.Module
    tokenizer: HFTokenizer
    model_config: dict[str, Any]
    task: Any
    params: Any


def restore(workdir: pathlib.Path, best: bool = False) -> Trained:
    """The newest (with `best`: the best-validation) state of a fine-tuning or pretraining workdir."""
    workdir = pathlib.Path(workdir)
    record = files.read_json(workdir / "config.json") if (workdir / "config.json").is_file() else {}
    name = record.get("experiment", NAME) if record.get("experiment") in ARCHITECTURES else NAME
    config = config_lib.load_saved_config(get_config() if name == NAME else get_pretrain_config(), workdir, name)
    architecture = ARCHITECTURES[name]
    model, tokenizer, model_config = saved_model(workdir, architecture)
    steps = max(config.num_train_steps, 1)
    if name == NAME:
        task, example = make_task(config, Start(model, tokenizer), steps), {"tokens": np.zeros((1, config.max_len), np.int32), "label": np.zeros(1, np.int32)}
    else:
        task, example = make_pretrain_task(config, model, tokenizer, steps), {"tokens": np.zeros((1, config.max_len), np.int32)}
    state = loop.restore_trained_state(workdir, name, task, example, best)
    return Trained(config, architecture, model, tokenizer, model_config, task, eval_params(state))


def predict(
    workdir: str | pathlib.Path, texts: Sequence[str], attention_path: pathlib.Path | None = None, best: bool = False
) -> list[Prediction]:
    """(label, P(pos), tokens in the text, tokens read) per text, from a fine-tuning workdir's newest checkpoint
    (with `best`: the best-validation one)."""
    trained = restore(pathlib.Path(workdir), best)
    if trained.architecture != CLASSIFIER:
        raise GenjaxError(f"workdir '{workdir}' holds a pretraining run; predict with a fine-tuning workdir")
    ids = trained.tokenizer.encode_batch(texts)
    check_texts(texts, ids, content=lambda row: len(row) - 2)  # [CLS] and [SEP] alone
    tokens = bert_inputs(ids, trained.config.max_len, trained.model.pad_id)
    probabilities = trained.task.probabilities(trained.params, tokens)
    if attention_path is not None:
        count = int(np.sum(tokens[0] != trained.model.pad_id))
        words = [trained.tokenizer.id_to_token(i) for i in tokens[0][: min(count, MAX_SHOWN)]]
        attention_png(last_attention(trained.task.model, trained.params, tokens[0]), words, count, attention_path)
    used = [min(len(row), trained.config.max_len) for row in ids]
    return [Prediction(LABELS[int(p >= 0.5)], float(p), len(row), n) for p, row, n in zip(probabilities, ids, used)]


def export(workdir: str | pathlib.Path, out: pathlib.Path, best: bool = False) -> str:
    """Writes the run in `workdir` as a Hugging Face model directory `out`; returns its architecture."""
    trained = restore(pathlib.Path(workdir), best)
    export_workdir(out, trained.architecture, trained.model, trained.params, trained.tokenizer, trained.model_config)
    return trained.architecture


SUBCOMMANDS = {
    "pretrain": cli.experiment_main(get_pretrain_config, pretrain, __doc__),
    "predict": lambda argv: predict_main(argv, f"{PROG} predict", predict),
    "export": lambda argv: export_main(argv, f"{PROG} export", export),
}

if __name__ == "__main__":
    cli.run_main(cli.experiment_main(get_config, train_and_evaluate, __doc__, SUBCOMMANDS))
