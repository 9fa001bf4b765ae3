"""Helpers shared by the data tests: configs and tiny image folders."""

import io
import pathlib

import numpy as np
from PIL import Image

from configs import default


def make_config(**overrides):
  config = default.get_config().data
  config.num_threads = 2
  config.prefetch_buffer_size = 1
  config.update(overrides)
  return config


def save_image(path: pathlib.Path, image: Image.Image, fmt: str = 'PNG'):
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format=fmt)


def make_distinct_folder(root: pathlib.Path, num_images: int = 16) -> dict:
  """Solid-grey 8x8 PNGs, each a different grey: grey value -> label.

  Classes 'odd' and 'even' (by image number), so labels are 0 ('even') and
  1 ('odd') after sorting.
  """
  grey_to_label = {}
  for i in range(num_images):
    grey = 10 * i + 5
    class_name = 'odd' if i % 2 else 'even'
    save_image(root / class_name / f'img_{i:03d}.png',
               Image.new('RGB', (8, 8), (grey, grey, grey)))
    grey_to_label[grey] = i % 2
  return grey_to_label


def greys_of(batch) -> list[int]:
  """The grey value (0..255) identifying each solid image of a batch."""
  return [int(round(v)) for v in batch['raw_image'][..., 0].mean((1, 2)) * 255]


def make_mixed_folder(root: pathlib.Path) -> None:
  """Two classes of assorted good images plus three unreadable files.

  'zebra' (created first, sorted second): 3 RGB PNGs + corrupt.jpg (random
  bytes) + truncated.png (half a PNG) + notimage.png (text) + notes.txt
  (not an image extension: ignored).
  'ant': an RGB JPEG, grey (L), RGBA and palette PNGs.
  """
  rng = np.random.default_rng(0)
  for i in range(3):
    save_image(root / 'zebra' / f'good_{i}.png', Image.fromarray(
        rng.integers(0, 256, (40, 50, 3), np.uint8)))
  (root / 'zebra' / 'corrupt.jpg').write_bytes(
      rng.integers(0, 256, 500, np.uint8).tobytes())
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(
      buffer, format='PNG')
  (root / 'zebra' / 'truncated.png').write_bytes(
      buffer.getvalue()[:len(buffer.getvalue()) // 2])
  (root / 'zebra' / 'notimage.png').write_text('hello, not a PNG')
  (root / 'zebra' / 'notes.txt').write_text('ignored')
  save_image(root / 'ant' / 'rgb.jpg', Image.fromarray(
      rng.integers(0, 256, (48, 36, 3), np.uint8)), fmt='JPEG')
  save_image(root / 'ant' / 'grey.png', Image.new('L', (30, 30), 77))
  save_image(root / 'ant' / 'rgba.png', Image.new('RGBA', (30, 30),
                                                  (1, 2, 3, 128)))
  save_image(root / 'ant' / 'palette.png', Image.new(
      'RGB', (30, 30), (200, 40, 10)).convert(
      'P', palette=Image.Palette.ADAPTIVE))


BAD_NAMES = ('corrupt.jpg', 'truncated.png', 'notimage.png')
