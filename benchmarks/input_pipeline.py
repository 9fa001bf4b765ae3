"""Throughput of the folder input pipeline (decode + ADM crop + batch).

Generates JPEGs with ImageNet-like sizes into a temporary folder, then times
`create_train_iterator` at each resolution and worker count:

  python benchmarks/input_pipeline.py --sizes=256,512 --workers=0,1,2
"""

import argparse
import itertools
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default as default_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from pixnerd_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position


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


def measure(root: str, resolution: int, num_workers: int, batch_size: int,
            num_threads: int, warmup: int, num_batches: int) -> float:
  """Images/s after `warmup` batches (which include worker start-up)."""
  config = default_config.get_config().data
  config.update(dict(name='folder', folder=root, resolution=resolution,
                     num_workers=num_workers, num_threads=num_threads))
  iterator = data.create_train_iterator(config, global_batch_size=batch_size,
                                        seed=0, process_index=0,
                                        process_count=1)
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
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--sizes', type=_int_list, default=[256, 512])
  parser.add_argument('--workers', type=_int_list, default=[0, 1, 2])
  parser.add_argument('--num_images', type=int, default=200)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--num_threads', type=int, default=8,
                      help='decoding threads per worker (config.num_threads)')
  parser.add_argument('--warmup_batches', type=int, default=2)
  parser.add_argument('--num_batches', type=int, default=10)
  parser.add_argument('--folder', default=None,
                      help='existing root/<class>/*.jpg folder to read '
                      'instead of generated JPEGs')
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    root = args.folder
    if root is None:
      root = tmp
      start = time.perf_counter()
      write_jpegs(pathlib.Path(root), args.num_images, args.num_classes)
      size = sum(f.stat().st_size for f in pathlib.Path(root).rglob('*.jpg'))
      print(f'Wrote {args.num_images} JPEGs ({size / args.num_images / 1e3:.0f}'
            f' kB each) in {time.perf_counter() - start:.1f}s.')
    print(f'CPU cores: {os.cpu_count()}; batch {args.batch_size}; '
          f'{args.num_threads} decoding threads per worker; '
          f'{args.warmup_batches} warm-up + {args.num_batches} timed batches.')
    print(f'{"size":>6} {"workers":>8} {"images/s":>10}')
    for resolution in args.sizes:
      for num_workers in args.workers:
        rate = measure(root, resolution, num_workers, args.batch_size,
                       args.num_threads, args.warmup_batches,
                       args.num_batches)
        print(f'{resolution:>6} {num_workers:>8} {rate:>10.1f}', flush=True)


if __name__ == '__main__':
  main()
