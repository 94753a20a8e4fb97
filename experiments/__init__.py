"""Runnable experiments: `python -m experiments.<name> --workdir DIR [--config.KEY=VALUE ...]`."""
