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


# ----------------------------------------------------------------------------- captions


def make_tokenizer(texts, max_length: int = 12):
  """A real TextEncoder (tiny Qwen3 module, no params) over the words of `texts`."""
  from pixnerd_jax.models import text_encoder  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.embedded import stand_in_text_encoder  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.models import qwen3  # pylint: disable=g-import-not-at-top
  tokenizer = stand_in_text_encoder.word_level_tokenizer(texts)
  config = qwen3.Qwen3Config(
      vocab_size=tokenizer.get_vocab_size(), hidden_size=8, intermediate_size=16,
      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
      head_dim=8, max_position_embeddings=64)
  return text_encoder.TextEncoder(qwen3.Qwen3Model(config), tokenizer, pad_id=0,
                                  max_length=max_length)


def grey_png(grey: int, size=(10, 14)) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', size, (grey, grey, grey)).save(buffer, format='PNG')
  return buffer.getvalue()


def caption_of_grey(grey: int) -> str:
  """Captions that name their image's grey, so tests can pair them up."""
  return f'grey {grey}'


def grey_of_caption(caption: str) -> int:
  return int(caption.split()[-1])


def make_caption_folder(root: pathlib.Path, num_good: int = 8) -> dict:
  """`num_good` solid-grey PNGs (nested folders) with `grey <g>` captions, plus
  bad examples: no caption file, an empty caption, a corrupt image.

  Returns:
    {relative path: grey} of the good images.
  """
  good = {}
  for i in range(num_good):
    grey = 20 * i + 10
    rel = pathlib.Path(f'part{i % 2}') / f'img_{i:02d}.png'
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(grey_png(grey, (10 + i, 14)))
    (root / rel).with_suffix('.txt').write_text(caption_of_grey(grey) + '\n')
    good[str(rel)] = grey
  (root / 'bad').mkdir(parents=True, exist_ok=True)
  (root / 'bad' / 'no_caption.png').write_bytes(grey_png(3))
  (root / 'bad' / 'empty.png').write_bytes(grey_png(4))
  (root / 'bad' / 'empty.txt').write_text('  \n')
  (root / 'bad' / 'corrupt.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  (root / 'bad' / 'corrupt.txt').write_text('grey 5')
  (root / 'bad' / 'notes.md').write_text('not an image')
  return good


CAPTION_FOLDER_BAD = ('no_caption.png', 'empty.png', 'corrupt.jpg')


def write_tar(path: pathlib.Path, members) -> None:
  """A plain tar of (name, bytes) members, in order."""
  import tarfile  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, 'w') as tar:
    for name, payload in members:
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      info.mtime = 0
      tar.addfile(info, io.BytesIO(payload))
