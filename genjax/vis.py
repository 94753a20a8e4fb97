"""PNG output: image grids for samples and reconstructions."""

from __future__ import annotations

import pathlib

import matplotlib.image
import numpy as np


def image_grid(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """[N, H, W, C] in [0, 1] -> one [rows*(H+pad)+pad, columns*(W+pad)+pad, C] image, N filled row-major."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = image
    return grid


def save_image_grid(images: np.ndarray, path: pathlib.Path, columns: int = 8) -> None:
    """Writes [N, H, W, C] images in [0, 1] as a PNG grid (grayscale when C == 1)."""
    grid = np.clip(image_grid(np.asarray(images, np.float32), columns), 0.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if grid.shape[-1] == 1:
        matplotlib.image.imsave(path, grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        matplotlib.image.imsave(path, grid)
