"""Captioned image folder: `root/**/x.jpg` with its caption in `x.txt` beside it.

The layout of the reference's `ImageText` dataset. Preprocessing is its
torchvision `Resize(S)` + `CenterCrop(S)` (`preprocess.decode_resize_crop`),
not the ADM crop of the class-conditional data.
"""

import os

from absl import logging
import numpy as np

from pixnerd_jax.data import captions
from pixnerd_jax.data import folder
from pixnerd_jax.data import preprocess

CAPTION_EXTENSION = '.txt'


def scan_caption_folder(root: str) -> tuple[list[str], np.ndarray]:
  """Lists the images under `root` and whether each has a caption file.

  Images without a caption stay in the list: the pipeline skips and counts
  them when it meets them, like unreadable images, so `num_skipped` reports
  them. (The reference drops them silently while scanning.)

  Args:
    root: any folder tree of images with sidecar captions.

  Returns:
    (image paths relative to root in sorted-walk order, bool has_caption).

  Raises:
    FileNotFoundError: `root` is not a directory.
    ValueError: no image files under `root`, or none with a caption.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'config.data.folder={root!r} does not exist or is not a directory. '
        'For caption_folder set it to a folder tree of images, each with its '
        'caption in a .txt file of the same name (x.jpg + x.txt).')
  paths, has_caption = [], []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not folder.is_hidden(d))
    names = set(filenames)
    for name in sorted(filenames):
      if folder.is_image_file(name) and not folder.is_hidden(name):
        paths.append(os.path.relpath(os.path.join(dirpath, name), root))
        has_caption.append(
            os.path.splitext(name)[0] + CAPTION_EXTENSION in names)
  if not paths:
    raise ValueError(
        f'config.data.folder={root!r} contains no image files (extensions '
        f'{", ".join(folder.IMAGE_EXTENSIONS)}) for caption_folder.')
  has_caption = np.asarray(has_caption, bool)
  if not has_caption.any():
    raise ValueError(
        f'None of the {len(paths)} images under config.data.folder={root!r} '
        f'has a caption file: caption_folder expects x{CAPTION_EXTENSION} '
        'beside each image x.jpg.')
  missing = int((~has_caption).sum())
  if missing:
    logging.warning('%d of %d images under %s have no %s caption file; they '
                    'are skipped (and counted in num_skipped).', missing,
                    len(paths), root, CAPTION_EXTENSION)
  return paths, has_caption


class CaptionFolderSource:
  """Random-access source reading (image, sidecar caption) pairs."""

  def __init__(self, root: str, resolution: int):
    self._root = root
    self._resolution = resolution
    paths, self._has_caption = scan_caption_folder(root)
    # Fixed-width bytes: a compact pickle for every worker process.
    # fsencode: a file name that is not UTF-8 (Latin-1 'café.png') round-trips.
    self._paths = np.asarray([os.fsencode(p) for p in paths])

  def __len__(self) -> int:
    return len(self._paths)

  def path(self, index: int) -> str:
    return os.path.join(self._root, os.fsdecode(self._paths[index]))

  def caption_path(self, index: int) -> str:
    return os.path.splitext(self.path(index))[0] + CAPTION_EXTENSION

  def load(self, index: int,
           rng: np.random.Generator) -> tuple[np.ndarray, str, None]:
    """Returns uint8 (S, S, 3), the caption and no label.

    Raises:
      FileNotFoundError: no caption file. ValueError: empty caption.
      OSError/...: unreadable image or caption.
    """
    del rng  # One caption per image.
    if not self._has_caption[index]:
      raise FileNotFoundError(f'no caption file {self.caption_path(index)}')
    with open(self.caption_path(index), 'rb') as f:
      caption = captions.decode_text(f.read())
    with open(self.path(index), 'rb') as f:
      encoded = f.read()
    return (preprocess.decode_resize_crop(encoded, self._resolution), caption,
            None)

  def describe(self, index: int) -> str:
    return self.path(index)
