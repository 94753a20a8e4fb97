"""The command line shared by every experiment: `--workdir DIR --config.KEY=VALUE ...`, clear errors."""

from __future__ import annotations

import argparse
import gc
import logging
import pathlib
import sys
import threading
import traceback
from typing import Callable, Sequence

import ml_collections

from genjax import config as config_lib
from genjax import cpu_tuning, distributed, workdir
from genjax.errors import GenjaxError
from genjax.task import check_loop_config


def parse(argv: Sequence[str], get_config: Callable[[], ml_collections.ConfigDict], description: str) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """Returns (flags, config) with every `--config.KEY=VALUE` applied; unknown flags, an empty workdir and loop
    fields out of range are errors.

    Also joins the multi-process job the distributed flags describe (see genjax/distributed.py) and applies the
    CPU tunings when `config.cpu_tuning` (genjax/cpu_tuning.py): for the program's entry point only.
    """
    config = get_config()
    rest = config_lib.parse_overrides(config, argv)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go; rerun to resume")
    distributed.add_flags(parser)
    flags, unknown = parser.parse_known_args(rest)
    if unknown:
        raise GenjaxError(f"unknown arguments {unknown}; use --workdir DIR and --config.KEY=VALUE")
    workdir.check_path(flags.workdir)
    check_loop_config(config)  # before the experiment builds its data: a batch size of 0 must not get that far
    distributed.initialize(distributed.settings_from(flags))
    cpu_tuning.apply(config.cpu_tuning)
    return flags, config


def experiment_main(
    get_config: Callable[[], ml_collections.ConfigDict],
    train: Callable[[ml_collections.ConfigDict, str], object],
    description: str,
    subcommands: dict[str, Callable[[Sequence[str]], object]] | None = None,
) -> Callable[[Sequence[str]], None]:
    """The `main(argv)` of an experiment, for `run_main`: `NAME ARGS...` runs subcommand NAME on ARGS (predict,
    sample, export, pretrain); any other argv trains: `--workdir DIR --config.KEY=VALUE ...` parsed into
    `get_config()` (see `parse`), then `train(config, workdir)`."""

    def main(argv: Sequence[str]) -> None:
        if argv and subcommands and argv[0] in subcommands:
            subcommands[argv[0]](argv[1:])
            return
        flags, config = parse(argv, get_config, description)
        train(config, flags.workdir)

    return main


LIBRARY_LOG = "library.log"  # in the workdir: what the libraries log while genjax reports the failure in one line


class _LibraryLog:
    """A text sink appending to `<workdir>/library.log` once the workdir exists (to stderr before that)."""

    def __init__(self, workdir: str | None):
        self.path = pathlib.Path(workdir) / LIBRARY_LOG if workdir else None
        self.used = False

    def write(self, text: str) -> None:
        if self.path is not None and self.path.parent.is_dir():
            try:
                with open(self.path, "a") as log:
                    log.write(text)
                self.used = True
                return
            except OSError:  # a full disk: the messages still reach the user
                pass
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _route_library_messages(argv: Sequence[str]) -> _LibraryLog:
    """Sends the libraries' log records (orbax's tracebacks of a failed write) and the exceptions Python reports
    but cannot raise (orbax's dropped reads of a damaged checkpoint: hundreds of lines; TensorBoard's writer thread
    on a full disk) to `<workdir>/library.log`, so that genjax's one-line error stays readable. Changes the
    process's logging, `sys.unraisablehook` and `threading.excepthook`: for the program's entry point only."""
    workdir = argparse.ArgumentParser(add_help=False)
    workdir.add_argument("--workdir")
    log = _LibraryLog(workdir.parse_known_args(argv)[0].workdir)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
    sys.unraisablehook = lambda unraisable: log.write(
        f"Exception ignored in {unraisable.object!r}:\n" + "".join(traceback.format_exception(unraisable.exc_value))
    )
    threading.excepthook = lambda failed: log.write(
        f"Exception in thread {failed.thread.name if failed.thread else '?'}:\n"
        + "".join(traceback.format_exception(failed.exc_value))
    )
    return log


def run_main(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> None:
    """The entry point: runs `main(argv)`; a GenjaxError becomes one `error: ...` line on stderr and exit status 2.

    Library messages go to `<workdir>/library.log` (see `_route_library_messages`); the error line says so when
    there are any.
    """
    argv = sys.argv[1:] if argv is None else argv
    log = _route_library_messages(argv)
    try:
        main(argv)
    except GenjaxError as error:
        gc.collect()  # orbax's dropped reads are reported when collected: before the line that names their log
        details = f" (library messages: {log.path})" if log.used else ""
        print(f"error: {error}{details}", file=sys.stderr)
        sys.exit(2)
