"""Tests of the ADM centre crop and the image-mode conversion."""

import io

import numpy as np
from PIL import Image
import pytest

from pixnerd_jax.data import loading
from pixnerd_jax.data import preprocess


def _independent_adm_crop(image: Image.Image, size: int) -> np.ndarray:
  """The reference crop, computed another way: halvings counted up front."""
  width, height = image.size
  # min(w // 2**k, h // 2**k) == min(w, h) // 2**k, so the number of halvings
  # is the number of k >= 0 with min(w, h) >> k >= 2 * size.
  halvings = 0
  while (min(width, height) >> halvings) >= 2 * size:
    halvings += 1
  for k in range(1, halvings + 1):
    image = image.resize((width >> k, height >> k), Image.BOX)
  short = min(image.size)
  # Python's round (half to even), as in the reference.
  new_w = round(image.size[0] * size / short)
  new_h = round(image.size[1] * size / short)
  image = image.resize((new_w, new_h), Image.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize('width,height,size', [
    (500, 375, 32),    # landscape, two halvings then a bicubic downscale
    (333, 517, 64),    # portrait, odd sizes
    (100, 40, 64),     # upscaling (short side below the target)
    (64, 64, 64),      # already the right size
    (130, 129, 64),    # one halving exactly at the threshold
])
def test_center_crop_matches_independent_pil_computation(width, height, size):
  rng = np.random.default_rng(width * height)
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  ours = preprocess.center_crop(image, size)
  assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, _independent_adm_crop(image, size))


def test_center_crop_keeps_the_centre():
  # Left third red, middle green, right third blue: a square crop of a 3:1
  # image must be all green.
  pixels = np.zeros((100, 300, 3), np.uint8)
  pixels[:, :100, 0] = 255
  pixels[:, 100:200, 1] = 255
  pixels[:, 200:, 2] = 255
  crop = preprocess.center_crop(Image.fromarray(pixels), 32).astype(int)
  assert (crop[4:-4, 4:-4, 1] == 255).all()
  assert (crop[4:-4, 4:-4, [0, 2]] == 0).all()


def _encode(image: Image.Image, fmt: str = 'PNG') -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def test_decode_converts_every_mode_to_rgb():
  grey = Image.new('L', (20, 20), 100)
  rgba = Image.new('RGBA', (20, 20), (10, 20, 30, 0))
  palette = Image.new('RGB', (20, 20), (200, 50, 0)).convert(
      'P', palette=Image.Palette.ADAPTIVE)
  cmyk = Image.new('RGB', (20, 20), (0, 255, 0)).convert('CMYK')
  sixteen = Image.fromarray(np.full((20, 20), 257 * 40, np.uint16))
  assert sixteen.mode == 'I;16'
  cases = [(grey, (100, 100, 100)), (rgba, (10, 20, 30)),
           (palette, (200, 50, 0)), (cmyk, (0, 255, 0)),
           (sixteen, (40, 40, 40))]
  for image, colour in cases:
    fmt = 'JPEG' if image.mode == 'CMYK' else 'PNG'
    out = preprocess.decode_and_crop(_encode(image, fmt), 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8, image.mode
    tol = 3 if fmt == 'JPEG' else 0
    np.testing.assert_allclose(out.reshape(-1, 3).astype(int),
                               np.broadcast_to(colour, (64, 3)), atol=tol,
                               err_msg=image.mode)


def test_decode_rejects_corrupt_and_truncated_bytes():
  good = _encode(Image.fromarray(
      np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)))
  with pytest.raises(loading.UNREADABLE):  # what the loader skips, nothing broader
    preprocess.decode_and_crop(b'this is not an image', 8)
  with pytest.raises(loading.UNREADABLE):  # what the loader skips, nothing broader
    preprocess.decode_and_crop(good[:len(good) // 2], 8)


def test_value_ranges_match_to_tensor_and_normalize():
  pixels = np.array([0, 51, 255], np.uint8)
  unit = preprocess.to_unit_float(pixels)
  np.testing.assert_allclose(unit, [0.0, 0.2, 1.0], rtol=1e-6)
  np.testing.assert_allclose(preprocess.to_model_range(unit), [-1, -0.6, 1],
                             rtol=1e-6)
  assert unit.dtype == np.float32


@pytest.mark.parametrize('width,height,size,resized,left,top', [
    # torchvision Resize(S): short side S, long side int(S * long / short).
    # CenterCrop(S): offsets int(round(excess / 2)), Python's half-to-even.
    (44, 37, 16, (19, 16), 2, 0),    # excess 3: round(1.5) = 2, ADM's // gives 1
    (50, 45, 16, (17, 16), 0, 0),    # excess 1: round(0.5) = 0
    (30, 61, 16, (16, 32), 0, 8),    # portrait, int(32.53) = 32
    (10, 7, 16, (22, 16), 3, 0),     # upscaling
    (16, 16, 16, (16, 16), 0, 0),    # already the size: untouched
])
def test_resize_center_crop_follows_torchvision(width, height, size, resized,
                                                left, top):
  rng = np.random.default_rng(width * height)
  image = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))
  ours = preprocess.resize_center_crop(image, size)
  expected = np.asarray(image.resize(resized, Image.BILINEAR))[
      top:top + size, left:left + size]
  assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, expected)


def test_decode_resize_crop_decodes_any_mode():
  grey = Image.new('L', (30, 20), 100)
  out = preprocess.decode_resize_crop(_encode(grey), 8)
  np.testing.assert_array_equal(out, np.full((8, 8, 3), 100, np.uint8))
  with pytest.raises(loading.UNREADABLE):  # what the loader skips, nothing broader
    preprocess.decode_resize_crop(b'not an image', 8)
