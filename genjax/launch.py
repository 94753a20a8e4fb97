"""Runs one multi-process job on this machine: N copies of a command, joined through 127.0.0.1.

  python -m genjax.launch --num_processes 2 --devices_per_process 2 -- \\
      python -m experiments.vae_mnist --workdir runs/vae_2x2

Each copy gets `--coordinator_address 127.0.0.1:PORT --num_processes N --process_id I`
appended and, on CPU, `devices_per_process` emulated devices. Their output is
printed with a `[I]` prefix. The launcher exits with the first non-zero status; a
process left running `grace_s` seconds after another failed is killed (JAX stops a
job whose process died on its own; this is only a backstop).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from genjax.cli import run_main
from genjax.errors import GenjaxError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_env(devices_per_process: int) -> dict[str, str]:
    """This environment with `devices_per_process` emulated CPU devices (0: unchanged)."""
    env = dict(os.environ)
    if devices_per_process:
        flag = f"--xla_force_host_platform_device_count={devices_per_process}"
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f)
        env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flag}".strip()
    return env


def process_commands(command: Sequence[str], num_processes: int, port: int = 0) -> list[list[str]]:
    """`command` once per process, with the explicit distributed flags appended (port 0: a free one)."""
    port = port or free_port()
    return [
        [*command, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(num_processes), "--process_id", str(i)]
        for i in range(num_processes)
    ]


def start_processes(
    command: Sequence[str], num_processes: int, devices_per_process: int = 0, port: int = 0, **popen_kwargs
) -> list[subprocess.Popen]:
    """Starts the `process_commands` of `command`, each with `devices_per_process` emulated devices."""
    env = process_env(devices_per_process)
    return [subprocess.Popen(c, env=env, **popen_kwargs) for c in process_commands(command, num_processes, port)]


def _forward(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[{index}] {line}")
        sys.stdout.flush()


def wait_all(processes: list[subprocess.Popen], grace_s: float) -> int:
    """Waits for every process; after the first failure the rest get `grace_s` seconds, then are killed."""
    failed_at = None
    while any(p.poll() is None for p in processes):
        if failed_at is None and any(p.returncode not in (None, 0) for p in processes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in processes:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    codes = [p.returncode for p in processes]
    return next((c for c in codes if c != 0), 0)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=0, help="emulated CPU devices per process (0: as is)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--grace_s", type=float, default=120.0, help="seconds the others get after a process fails")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
    flags = parser.parse_args(argv)
    command = flags.command[1:] if flags.command[:1] == ["--"] else flags.command
    if not command:
        raise GenjaxError("no command given; write e.g. -- python -m experiments.vae_mnist --workdir runs/x")
    if flags.num_processes < 1:
        raise GenjaxError(f"--num_processes={flags.num_processes} must be at least 1")
    processes = start_processes(
        command, flags.num_processes, flags.devices_per_process, flags.port,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    threads = [threading.Thread(target=_forward, args=(i, p.stdout), daemon=True) for i, p in enumerate(processes)]
    for thread in threads:
        thread.start()
    code = wait_all(processes, flags.grace_s)
    for thread in threads:
        thread.join(timeout=5)
    sys.exit(code)


if __name__ == "__main__":
    run_main(main)
