"""Multi-process start-up: `jax.distributed.initialize` from flags, environment variables or the cluster.

Three ways to form one job out of several processes (each process then sees every
device of the job in `jax.devices()` and its own in `jax.local_devices()`):

  explicit:  --coordinator_address HOST:PORT --num_processes N --process_id I
             (or GENJAX_COORDINATOR_ADDRESS / GENJAX_NUM_PROCESSES / GENJAX_PROCESS_ID);
  cluster:   --distributed auto (or GENJAX_DISTRIBUTED=auto): JAX reads SLURM, Open MPI,
             Cloud TPU VM or GKE settings itself;
  neither:   one process, nothing to initialise.

On CPU the cross-process collectives go through gloo (TCP), so processes on one
machine (or several) form one CPU job; emulate several devices per process with
XLA_FLAGS=--xla_force_host_platform_device_count=N.

A process that dies stops the others: its peers' collectives fail at once when its
sockets close, and the coordination service declares a silent process dead after
`heartbeat_timeout_s` seconds and terminates the job.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import jax

from genjax.errors import GenjaxError, first_line

ENV_PREFIX = "GENJAX_"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """How this process joins a job. All None/"" and mode "": a single-process run."""

    mode: str = ""  # "" (explicit settings or single process) | "auto" (cluster auto-detection)
    coordinator_address: str | None = None  # "host:port" of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --distributed, --coordinator_address, --num_processes, --process_id, --heartbeat_timeout_s."""
    group = parser.add_argument_group("multi-process (see genjax/distributed.py)")
    group.add_argument("--distributed", choices=("auto",), default=None,
                       help="auto: let JAX detect SLURM / Open MPI / Cloud TPU / GKE and join that job")
    group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0 (explicit launch)")
    group.add_argument("--num_processes", type=int, default=None, help="processes in the job (explicit launch)")
    group.add_argument("--process_id", type=int, default=None, help="this process, 0..num_processes-1 (explicit launch)")
    group.add_argument("--heartbeat_timeout_s", type=int, default=None,
                       help=f"seconds of silence after which a process counts as dead (default {DEFAULT_HEARTBEAT_TIMEOUT_S})")


def _env_int(name: str) -> int | None:
    text = os.environ.get(ENV_PREFIX + name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise GenjaxError(f"environment variable {ENV_PREFIX}{name}={text!r} is not an integer") from None


def settings_from(flags: argparse.Namespace) -> DistributedSettings:
    """Flags first, then GENJAX_* environment variables; checks the explicit triple is complete and consistent."""
    settings = DistributedSettings(
        mode=flags.distributed or os.environ.get(ENV_PREFIX + "DISTRIBUTED", ""),
        coordinator_address=flags.coordinator_address or os.environ.get(ENV_PREFIX + "COORDINATOR_ADDRESS") or None,
        num_processes=flags.num_processes if flags.num_processes is not None else _env_int("NUM_PROCESSES"),
        process_id=flags.process_id if flags.process_id is not None else _env_int("PROCESS_ID"),
        heartbeat_timeout_s=flags.heartbeat_timeout_s or _env_int("HEARTBEAT_TIMEOUT_S") or DEFAULT_HEARTBEAT_TIMEOUT_S,
    )
    if settings.mode not in ("", "auto"):
        raise GenjaxError(f"{ENV_PREFIX}DISTRIBUTED={settings.mode!r} is not supported; use 'auto' or leave it unset")
    if settings.explicit:
        if settings.mode == "auto":
            raise GenjaxError("--distributed auto detects the cluster itself; drop --coordinator_address/"
                              "--num_processes/--process_id, or drop --distributed auto")
        missing = [name for name, value in (("--coordinator_address", settings.coordinator_address),
                                            ("--num_processes", settings.num_processes),
                                            ("--process_id", settings.process_id)) if value is None]
        if missing:
            raise GenjaxError(f"an explicit multi-process launch needs {', '.join(missing)} as well "
                              "(or the GENJAX_* environment variables); pass all three")
        if settings.num_processes < 1 or not 0 <= settings.process_id < settings.num_processes:
            raise GenjaxError(f"--process_id={settings.process_id} must lie in 0..{settings.num_processes - 1} "
                              f"for --num_processes={settings.num_processes}")
        if ":" not in settings.coordinator_address:
            raise GenjaxError(f"--coordinator_address={settings.coordinator_address!r} needs a port, e.g. 127.0.0.1:12355")
    return settings


def initialize(settings: DistributedSettings) -> None:
    """Joins the job `settings` describe (a no-op for a single process). Call before any JAX computation."""
    if not settings.explicit and settings.mode != "auto":
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU jobs across processes
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            heartbeat_timeout_seconds=settings.heartbeat_timeout_s,
        )
    except (RuntimeError, ValueError) as error:
        how = ("--distributed auto found no supported cluster (SLURM, Open MPI, Cloud TPU, GKE); launch explicitly"
               if settings.mode == "auto" else f"check that all {settings.num_processes} processes started and can "
               f"reach {settings.coordinator_address}")
        raise GenjaxError(f"could not join the multi-process job ({first_line(error)}); {how}") from None
