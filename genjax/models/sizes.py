"""Named sizes of BERT (genjax/models/bert.py) and GPT-2 (genjax/models/gpt2.py): a size for tests and smoke runs,
then the published ones, e.g. `GPT2(**size("gpt2"))` or `BertClassifier(**size("bert-base"), num_classes=2)`."""

from __future__ import annotations

from genjax.errors import GenjaxError

SIZES: dict[str, dict[str, int]] = {
    "bert-test": dict(vocab_size=1024, num_layers=2, num_heads=4, width=64, mlp_dim=256, max_len=128),  # tests, smoke runs
    "bert-tiny": dict(vocab_size=30522, num_layers=2, num_heads=2, width=128, mlp_dim=512, max_len=512),  # 4.4M; Turc et al. 2019
    "bert-mini": dict(vocab_size=30522, num_layers=4, num_heads=4, width=256, mlp_dim=1024, max_len=512),  # 11M; Turc et al. 2019
    "bert-small": dict(vocab_size=30522, num_layers=4, num_heads=8, width=512, mlp_dim=2048, max_len=512),  # 29M; Turc et al. 2019
    "bert-base": dict(vocab_size=30522, num_layers=12, num_heads=12, width=768, mlp_dim=3072, max_len=512),  # 110M
    "bert-large": dict(vocab_size=30522, num_layers=24, num_heads=16, width=1024, mlp_dim=4096, max_len=512),  # 335M
    "gpt2-tiny": dict(vocab_size=1024, num_layers=2, num_heads=4, width=64, mlp_dim=256, max_len=128),  # tests, smoke runs
    "gpt2-mini": dict(vocab_size=50257, num_layers=4, num_heads=4, width=256, mlp_dim=1024, max_len=1024),  # CPU runs
    "gpt2": dict(vocab_size=50257, num_layers=12, num_heads=12, width=768, mlp_dim=3072, max_len=1024),  # 124M
    "gpt2-medium": dict(vocab_size=50257, num_layers=24, num_heads=16, width=1024, mlp_dim=4096, max_len=1024),  # 355M
    "gpt2-large": dict(vocab_size=50257, num_layers=36, num_heads=20, width=1280, mlp_dim=5120, max_len=1024),  # 774M
    "gpt2-xl": dict(vocab_size=50257, num_layers=48, num_heads=25, width=1600, mlp_dim=6400, max_len=1024),  # 1.56B
}


def size(name: str) -> dict[str, int]:
    """The model fields (vocab_size, num_layers, num_heads, width, mlp_dim, max_len) of the size `name`."""
    if name not in SIZES:
        raise GenjaxError(f"unknown model size '{name}'; choose one of {tuple(SIZES)}")
    return dict(SIZES[name])
