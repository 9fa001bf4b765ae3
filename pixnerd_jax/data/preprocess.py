"""Image decoding and the reference's two centre crops.

PixNerd's official data pipeline loads ImageNet with PIL, converts to RGB and
applies the ADM `center_crop_arr`: repeated 2x BOX downsampling while the short
side is at least twice the target, one BICUBIC resize of the short side to the
target, then a centre crop. Matching it exactly matters because FID at 256/512
is sensitive to the resampling filters used on the training images.

Its text-to-image dataset (`ImageText`) instead applies torchvision's
`Resize(S)` + `CenterCrop(S)` to the PIL image: `resize_center_crop` here.
"""

import io

import numpy as np
from PIL import Image

# PIL modes holding more than 8 bits per sample. `Image.convert('RGB')` clips
# these at 255 (a 16-bit PNG comes out almost white), so they are rescaled.
_HIGH_BIT_DEPTH_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')


def to_rgb(image: Image.Image) -> Image.Image:
  """Converts a PIL image of any mode (L, P, RGBA, CMYK, 16-bit, ...) to RGB.

  Alpha is dropped (not composited) like the reference's `convert('RGB')`.

  Args:
    image: a PIL image.

  Returns:
    The image in mode 'RGB'.
  """
  if image.mode == 'RGB':
    return image
  if image.mode in _HIGH_BIT_DEPTH_MODES:
    # 16-bit greyscale: 0..65535 -> 0..255 (65535 / 257 == 255 exactly).
    grey = np.asarray(image, dtype=np.float64) / 257.0
    grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode='L').convert('RGB')
  if image.mode == 'F':
    grey = np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode='L').convert('RGB')
  return image.convert('RGB')


def center_crop(image: Image.Image, size: int) -> np.ndarray:
  """ADM centre crop: BOX-halve, BICUBIC-resize the short side, crop.

  Args:
    image: an RGB PIL image of any size.
    size: the side S of the square output.

  Returns:
    uint8 array (S, S, 3).
  """
  # Halving with a BOX filter first is what makes the final bicubic resize
  # alias-free for large downscaling factors.
  while min(image.size) >= 2 * size:
    width, height = image.size
    image = image.resize((width // 2, height // 2), resample=Image.BOX)
  width, height = image.size
  scale = size / min(width, height)
  image = image.resize(
      (round(width * scale), round(height * scale)), resample=Image.BICUBIC
  )
  pixels = np.asarray(image)
  top = (pixels.shape[0] - size) // 2
  left = (pixels.shape[1] - size) // 2
  return pixels[top:top + size, left:left + size]


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """torchvision `Resize(S)` then `CenterCrop(S)` on a PIL image.

  Resize(S) scales the short side to S and the long side to
  int(S * long / short) (truncated, not rounded), with bilinear filtering.
  On a PIL image torchvision calls PIL's own `resize(..., BILINEAR)`, which
  always antialiases (the filter support widens with the downscaling factor),
  so this is the reference's exact computation, not an approximation of it;
  only torchvision's tensor path (`antialias=True` on torch tensors) differs
  from PIL, by at most one 8-bit level (measured on photo-like images).
  CenterCrop offsets are int(round((side - S) / 2)) (Python's round: half to
  even), unlike the ADM crop's floor division.

  Args:
    image: an RGB PIL image of any size.
    size: the side S of the square output.

  Returns:
    uint8 array (S, S, 3).
  """
  width, height = image.size
  if width <= height:
    new_size = (size, int(size * height / width))
  else:
    new_size = (int(size * width / height), size)
  if new_size != image.size:
    image = image.resize(new_size, resample=Image.BILINEAR)
  pixels = np.asarray(image)
  top = int(round((pixels.shape[0] - size) / 2.0))
  left = int(round((pixels.shape[1] - size) / 2.0))
  return pixels[top:top + size, left:left + size]


def decode(encoded: bytes) -> Image.Image:
  """Fully decodes an encoded image (JPEG/PNG/WebP/...) to an RGB PIL image.

  Raises:
    Whatever PIL raises for corrupt, truncated or non-image bytes (OSError,
    SyntaxError, ValueError, ...); the pipeline counts and skips these.
  """
  with Image.open(io.BytesIO(encoded)) as image:
    # `load()` forces the full decode here, so truncated files fail now rather
    # than silently later.
    image.load()
    return to_rgb(image)


def _checked(pixels: np.ndarray, size: int) -> np.ndarray:
  if pixels.shape != (size, size, 3):
    raise ValueError(f'Cropped image has shape {pixels.shape}, expected '
                     f'{(size, size, 3)}.')
  return pixels


def decode_and_crop(encoded: bytes, size: int) -> np.ndarray:
  """Decodes an encoded image and applies the ADM centre crop (class data).

  Args:
    encoded: the image file's bytes.
    size: the side S of the square output.

  Returns:
    uint8 array (S, S, 3).

  Raises:
    As `decode`, for corrupt, truncated or non-image bytes.
  """
  return _checked(center_crop(decode(encoded), size), size)


def decode_resize_crop(encoded: bytes, size: int) -> np.ndarray:
  """Decodes an encoded image and applies `resize_center_crop` (caption data).

  Args:
    encoded: the image file's bytes.
    size: the side S of the square output.

  Returns:
    uint8 array (S, S, 3).

  Raises:
    As `decode`, for corrupt, truncated or non-image bytes.
  """
  return _checked(resize_center_crop(decode(encoded), size), size)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
  """uint8 in 0..255 -> float32 in [0, 1]; float input is taken as [0, 1].

  Args:
    pixels: uint8 or float array of any shape.

  Returns:
    float32 array of the same shape, in [0, 1].
  """
  # asarray: a plain ndarray result even for ndarray subclasses (Grain's
  # shared-memory arrays); astype then always copies.
  pixels = np.asarray(pixels)
  if pixels.dtype == np.uint8:
    # Same as torchvision's ToTensor: x / 255.
    return pixels.astype(np.float32) / np.float32(255.0)
  return pixels.astype(np.float32)


def to_model_range(unit: np.ndarray) -> np.ndarray:
  """[0, 1] -> [-1, 1] as Normalize(mean=0.5, std=0.5): (x - 0.5) / 0.5."""
  return (unit - np.float32(0.5)) / np.float32(0.5)
