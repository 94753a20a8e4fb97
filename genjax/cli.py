"""The command line shared by every experiment: `--workdir DIR --config.KEY=VALUE ...`, clear errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import ml_collections

from genjax import config as config_lib
from genjax import distributed
from genjax.errors import GenjaxError


def parse(argv: Sequence[str], get_config: Callable[[], ml_collections.ConfigDict], description: str) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """Returns (flags, config) with every `--config.KEY=VALUE` applied; unknown flags are errors.

    Also joins the multi-process job the distributed flags describe (see genjax/distributed.py).
    """
    config = get_config()
    rest = config_lib.parse_overrides(config, argv)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go; rerun to resume")
    distributed.add_flags(parser)
    flags, unknown = parser.parse_known_args(rest)
    if unknown:
        raise GenjaxError(f"unknown arguments {unknown}; use --workdir DIR and --config.KEY=VALUE")
    distributed.initialize(distributed.settings_from(flags))
    return flags, config


def run_main(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> None:
    """Runs `main(argv)`; a GenjaxError becomes one `error: ...` line on stderr and exit status 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except GenjaxError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
