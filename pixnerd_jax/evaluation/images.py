"""Model-range images to uint8, grids and PNG files."""

import numpy as np
from etils import epath
from PIL import Image
from PIL import ImageDraw


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


def label_rows(grid: np.ndarray, labels: list[str], pad: int = 2) -> np.ndarray:
  """A `make_grid` grid of len(labels) rows with each row's label written in a white
  margin at its left (black text, PIL's built-in font)."""
  rows = len(labels)
  row_height = (grid.shape[0] - pad) // rows
  margin = 7 * max(len(t) for t in labels) + 6
  image = Image.new("RGB", (grid.shape[1] + margin, grid.shape[0]), (255, 255, 255))
  image.paste(Image.fromarray(grid).convert("RGB"), (margin, 0))
  draw = ImageDraw.Draw(image)
  for r, text in enumerate(labels):
    top = pad + r * row_height + max(0, (row_height - pad - 11) // 2)
    draw.text((3, top), text, fill=(0, 0, 0))
  out = np.asarray(image)
  return out if grid.ndim == 3 and grid.shape[2] == 3 else out[..., :grid.shape[-1]]
