"""Input: TFDS sources decoded once, deterministic resumable loaders, global sharded batches."""
