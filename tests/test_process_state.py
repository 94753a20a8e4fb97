"""No hidden global state: a training run through the library (`loop.train_and_evaluate`) leaves jax's random
lowering, the signal handlers, logging and Python's unraisable-exception hook as it found them; only the entry
points' explicit switch (`genjax/cpu_tuning.py`) changes the Threefry lowering."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import json, logging, signal, sys, tempfile, threading
import jax

def loops_in_a_draw():
    draw = jax.jit(lambda key: jax.random.bernoulli(key, 0.3, (128, 784)))
    return draw.lower(jax.random.key(0)).compile().as_text().count(" while(")

def process_state():
    return {
        "signals": [repr(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)],
        "root_handlers": [repr(h) for h in logging.getLogger().handlers],
        "asyncio_filters": len(logging.getLogger("asyncio").filters),
        "unraisablehook": repr(sys.unraisablehook),
        "thread_excepthook": repr(threading.excepthook),
    }

from experiments import vae_mnist
from genjax import cpu_tuning, loop
before = process_state()  # after the imports: orbax's own import adds a stderr handler to the root logger
config = vae_mnist.get_config()
config.update(dict(num_train_steps=4, log_every=2, checkpoint_every=2, iwae_samples=0, data_dir=sys.argv[1], download=False))
loop.train_and_evaluate(config, tempfile.mkdtemp(), vae_mnist.build(config))
jax.clear_caches()
result = {"unchanged": process_state() == before, "loops_after_library": loops_in_a_draw()}
cpu_tuning.apply(True)
jax.clear_caches()
result["loops_after_switch"] = loops_in_a_draw()
print(json.dumps(result))
"""


def test_the_library_changes_no_process_state_and_the_switch_is_explicit(data_dir):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, data_dir], cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["unchanged"], done.stdout
    assert result["loops_after_library"] > 0  # jax's own CPU lowering: one while loop per hash
    assert result["loops_after_switch"] == 0
