"""Throughput of the input pipelines (decode + crop + batch [+ tokenize]).

Generates JPEGs with ImageNet-like sizes into a temporary folder, then times
`create_train_iterator` at each resolution and worker count:

  python benchmarks/input_pipeline.py --sizes=256,512 --workers=0,1,2

Captioned sources (text-to-image): each JPEG also gets a LAION-like caption
(8-40 words) in a sidecar .txt (caption_folder), and the pairs are packed into
webdataset .tar shards (caption_tar); captions are tokenized by a TextEncoder
with a word-level tokenizer, padded to --max_length tokens:

  python benchmarks/input_pipeline.py --sources=caption_folder,caption_tar \
      --sizes=256 --workers=0,1,2
"""

import argparse
import io
import itertools
import os
import pathlib
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default as default_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from pixnerd_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from pixnerd_jax.models import text_encoder  # pylint: disable=g-import-not-at-top,wrong-import-position
from pixnerd_jax.embedded import stand_in_text_encoder  # pylint: disable=g-import-not-at-top,wrong-import-position
from pixnerd_jax.models import qwen3  # pylint: disable=g-import-not-at-top,wrong-import-position

SOURCES = ('folder', 'caption_folder', 'caption_tar')
_WORDS = ('a', 'the', 'of', 'with', 'and', 'photo', 'painting', 'red', 'blue',
          'green', 'small', 'large', 'dog', 'cat', 'house', 'tree', 'street',
          'city', 'sky', 'sunset', 'woman', 'man', 'car', 'table', 'mountain',
          'lake', 'river', 'in', 'on', 'at', 'night', 'morning', 'vintage',
          'detailed', 'portrait', 'landscape', 'close-up', 'wooden', 'old')


def _int_list(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x]


def write_jpegs(root: pathlib.Path, num_images: int, num_classes: int,
                seed: int = 0) -> None:
  """Writes photo-like JPEGs, 400-500 wide x 350-500 high, quality 90."""
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    width, height = int(rng.integers(400, 501)), int(rng.integers(350, 501))
    # Smooth colour fields plus grain: compresses like a photo (tens of kB),
    # unlike pure noise.
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3),
                          np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, np.int16) + rng.integers(
        -12, 13, (height, width, 3), np.int16)
    class_dir = root / f'class_{i % num_classes:03d}'
    class_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        class_dir / f'{i:05d}.jpg', quality=90)


def write_captions(root: pathlib.Path, seed: int = 0) -> list[str]:
  """Writes a random 8-40 word caption next to every JPEG; returns them."""
  rng = np.random.default_rng(seed)
  texts = []
  for path in sorted(root.rglob('*.jpg')):
    text = ' '.join(rng.choice(_WORDS, int(rng.integers(8, 41))))
    path.with_suffix('.txt').write_text(text)
    texts.append(text)
  return texts


def write_shards(root: pathlib.Path, out: pathlib.Path,
                 per_shard: int) -> str:
  """Packs root's (x.jpg, x.txt) pairs into webdataset shards; their glob."""
  out.mkdir(parents=True, exist_ok=True)
  images = sorted(root.rglob('*.jpg'))
  for start in range(0, len(images), per_shard):
    with tarfile.open(out / f'shard-{start // per_shard:05d}.tar', 'w') as tar:
      for i, image in enumerate(images[start:start + per_shard], start):
        for path, extension in ((image, 'jpg'),
                                (image.with_suffix('.txt'), 'txt')):
          payload = path.read_bytes()
          info = tarfile.TarInfo(f'{i:06d}.{extension}')
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  return str(out / 'shard-*.tar')


def make_tokenizer(texts: list[str], max_length: int):
  """A TextEncoder (tokenizer side only: no params) over the caption words."""
  tokenizer = stand_in_text_encoder.word_level_tokenizer(texts)
  config = qwen3.Qwen3Config(
      vocab_size=tokenizer.get_vocab_size(), hidden_size=8,
      intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
      num_key_value_heads=1, head_dim=8)
  return text_encoder.TextEncoder(qwen3.Qwen3Model(config), tokenizer, 0,
                                  max_length=max_length)


def measure(overrides: dict, resolution: int, num_workers: int,
            batch_size: int, num_threads: int, warmup: int, num_batches: int,
            tokenizer=None) -> float:
  """Images/s after `warmup` batches (which include worker start-up)."""
  config = default_config.get_config().data
  config.update(dict(resolution=resolution, num_workers=num_workers,
                     num_threads=num_threads, **overrides))
  iterator = data.create_train_iterator(config, global_batch_size=batch_size,
                                        seed=0, process_index=0,
                                        process_count=1, tokenizer=tokenizer)
  try:
    for batch in itertools.islice(iterator, warmup):
      assert batch['image'].shape == (batch_size, resolution, resolution, 3)
    start = time.perf_counter()
    for _ in itertools.islice(iterator, num_batches):
      pass
    elapsed = time.perf_counter() - start
  finally:
    iterator.close()
  return num_batches * batch_size / elapsed


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sources', default='folder',
                      help=f'comma-separated, of {",".join(SOURCES)}')
  parser.add_argument('--sizes', type=_int_list, default=[256, 512])
  parser.add_argument('--workers', type=_int_list, default=[0, 1, 2])
  parser.add_argument('--num_images', type=int, default=200)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--num_threads', type=int, default=8,
                      help='decoding threads per worker (config.num_threads)')
  parser.add_argument('--warmup_batches', type=int, default=2)
  parser.add_argument('--num_batches', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=1,
                      help='measure each setting this often; report the best '
                      '(steadier on a shared machine)')
  parser.add_argument('--max_length', type=int, default=128,
                      help='caption tokens (config.text_encoder.max_length)')
  parser.add_argument('--per_shard', type=int, default=50,
                      help='examples per generated .tar shard')
  parser.add_argument('--folder', default=None,
                      help='existing root/<class>/*.jpg folder to read '
                      'instead of generated JPEGs (folder source only)')
  args = parser.parse_args()
  sources = [s for s in args.sources.split(',') if s]
  unknown = sorted(set(sources) - set(SOURCES))
  if unknown:
    parser.error(f'--sources: unknown {unknown}; choose from {SOURCES}.')
  if args.folder and sources != ['folder']:
    parser.error('--folder only applies to --sources=folder.')

  with tempfile.TemporaryDirectory() as tmp:
    root = args.folder
    tokenizer = None
    if root is None:
      root = os.path.join(tmp, 'images')
      start = time.perf_counter()
      write_jpegs(pathlib.Path(root), args.num_images, args.num_classes)
      size = sum(f.stat().st_size for f in pathlib.Path(root).rglob('*.jpg'))
      print(f'Wrote {args.num_images} JPEGs ({size / args.num_images / 1e3:.0f}'
            f' kB each) in {time.perf_counter() - start:.1f}s.')
    if any(s.startswith('caption') for s in sources):
      texts = write_captions(pathlib.Path(root))
      tokenizer = make_tokenizer(texts, args.max_length)
      start = time.perf_counter()
      for _ in range(10):
        tokenizer.tokenize(texts[:args.batch_size])
      print(f'Tokenizing a batch of {args.batch_size} captions to '
            f'{args.max_length} tokens: '
            f'{(time.perf_counter() - start) / 10 * 1e3:.2f} ms.')
    if 'caption_tar' in sources:
      pattern = write_shards(pathlib.Path(root), pathlib.Path(tmp) / 'shards',
                             args.per_shard)
      start = time.perf_counter()
      data.make_source(_tar_config(pattern))
      print(f'Indexed {args.num_images} examples in '
            f'{-(-args.num_images // args.per_shard)} shards in '
            f'{time.perf_counter() - start:.2f}s (cached beside the shards).')
    print(f'CPU cores: {os.cpu_count()}; batch {args.batch_size}; '
          f'{args.num_threads} decoding threads per worker; '
          f'{args.warmup_batches} warm-up + {args.num_batches} timed batches.')
    print(f'{"source":>15} {"size":>6} {"workers":>8} {"images/s":>10}')
    for source in sources:
      if source == 'caption_tar':
        overrides = dict(name=source, tar_shards=pattern)
      else:
        overrides = dict(name=source, folder=root)
      for resolution in args.sizes:
        for num_workers in args.workers:
          rate = max(
              measure(overrides, resolution, num_workers, args.batch_size,
                      args.num_threads, args.warmup_batches, args.num_batches,
                      tokenizer if source != 'folder' else None)
              for _ in range(args.repeats))
          print(f'{source:>15} {resolution:>6} {num_workers:>8} '
                f'{rate:>10.1f}', flush=True)


def _tar_config(pattern: str):
  config = default_config.get_config().data
  config.update(dict(name='caption_tar', tar_shards=pattern, resolution=8))
  return config


if __name__ == '__main__':
  main()
