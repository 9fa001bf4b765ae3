"""Model-range images to uint8, grids and PNG files."""

import numpy as np
from etils import epath
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 with the reference's rounding: floor((x + 1) 127.5 + 0.5)."""
  x = np.asarray(images, np.float32)
  return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, rows: int, pad: int = 2) -> np.ndarray:
  """(N, H, W, C) uint8, N = rows * cols -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) image."""
  n, h, w, c = images.shape
  cols = n // rows
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(rows * cols):
    r, k = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + k * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(image: np.ndarray, path: str) -> None:
  with epath.Path(path).open("wb") as f:
    Image.fromarray(image).save(f, format="PNG")
