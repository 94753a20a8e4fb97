"""Flax (linen) modules, one file per family; parameters live in explicit pytrees (init/apply only)."""
