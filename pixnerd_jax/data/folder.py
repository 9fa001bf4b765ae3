"""Image-folder source: `root/<class>/**/*.{jpg,jpeg,png,webp}`.

Class ids follow torchvision's ImageFolder (class folder names sorted), so an
ImageNet train folder (`n01440764`, ...) gets the ids the official PixNerd
checkpoints were trained with.
"""

import os

import numpy as np

from pixnerd_jax.data import preprocess
from pixnerd_jax.data.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp')


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def is_hidden(name: str) -> bool:
  # Hidden folders (e.g. `.ipynb_checkpoints`) would otherwise become a class
  # and shift every class id after it.
  return name.startswith('.')


def scan_folder(root: str) -> tuple[list[str], list[str], np.ndarray]:
  """Lists the classes and image files under `root`.

  Args:
    root: dataset root holding one sub-folder per class.

  Returns:
    (class_names sorted, file paths relative to root, int32 labels), files in
    a deterministic order (class, then sorted walk of the class folder).

  Raises:
    FileNotFoundError: `root` does not exist or is not a directory.
    DataError: `root` has no class folders, or a class folder has no images.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'config.data.folder={root!r} does not exist or is not a directory. '
        'Set config.data.folder to a directory laid out as '
        'root/<class_name>/<image files>.')
  class_names = sorted(
      entry.name for entry in os.scandir(root)
      if entry.is_dir() and not is_hidden(entry.name))
  if not class_names:
    raise DataError(
        f'config.data.folder={root!r} has no class sub-folders. Expected '
        'root/<class_name>/<image files> (one sub-folder per class).')
  paths, labels = [], []
  for label, class_name in enumerate(class_names):
    class_dir = os.path.join(root, class_name)
    count = 0
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
      for name in sorted(filenames):
        if is_image_file(name) and not is_hidden(name):
          paths.append(os.path.relpath(os.path.join(dirpath, name), root))
          labels.append(label)
          count += 1
    if not count:
      raise DataError(
          f'Class folder {class_dir!r} contains no image files '
          f'(extensions {", ".join(IMAGE_EXTENSIONS)}). Add images to it or '
          'remove it; an empty class would leave its class id unused.')
  return class_names, paths, np.asarray(labels, np.int32)


class FolderSource:
  """Random-access source reading and centre-cropping images from a folder."""

  def __init__(self, root: str, resolution: int):
    self._root = root
    self._resolution = resolution
    self.class_names, paths, self._labels = scan_folder(root)
    # One fixed-width bytes array instead of a list of str: a compact pickle
    # (ImageNet has 1.28M paths) for every worker process.
    # fsencode: a file name that is not UTF-8 (Latin-1 'café.png') round-trips.
    self._paths = np.asarray([os.fsencode(p) for p in paths])

  def __len__(self) -> int:
    return len(self._labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def path(self, index: int) -> str:
    return os.path.join(self._root, os.fsdecode(self._paths[index]))

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """Returns uint8 (S, S, 3) and the label of example `index`.

    Raises:
      OSError/ValueError/...: for an unreadable or undecodable file.
    """
    with open(self.path(index), 'rb') as f:
      encoded = f.read()
    return (preprocess.decode_and_crop(encoded, self._resolution),
            int(self._labels[index]))

  def describe(self, index: int) -> str:
    return self.path(index)
