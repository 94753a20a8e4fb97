"""genjax: pure-functional Flax models and jitted train steps (VAE, GAN, transformer, classifiers) on one shared
stack: one Optax pipeline, one training loop (`genjax.loop`), sharded TFDS input and orbax checkpoints.

A regular package, not a namespace one: a forked copy imports its own modules, never those of another
installed genjax. Importing genjax changes nothing in the process (no jax lowering, XLA flag or allocator).
"""

__version__ = "0.1.0"
