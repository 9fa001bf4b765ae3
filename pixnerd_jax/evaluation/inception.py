"""The InceptionV3 that FID is defined with (TF "2015-12-05" graph), in Flax linen.

This is the network of pytorch-fid's `FIDInceptionV3`, whose weights
(`pt_inception-2015-12-05-6726825d.pth`) are a port of the TF FID graph. It differs from
torchvision's InceptionV3 in three places, all reproduced here: the average pools inside
the A, C and first E blocks ignore the zero padding (count_include_pad=False, as TF),
the last E block (Mixed_7c) max-pools in its pool branch, and the classifier has 1008
outputs. Inputs are resized to 299x299 (bilinear, align_corners=False, no antialiasing,
as torch's F.interpolate) and scaled to [-1, 1].

Module and parameter names follow the torch state_dict (Mixed_5b/branch1x1/conv, ...),
so the converter is a rename plus transposes:

  python -m pixnerd_jax.evaluation.inception convert pt_inception-2015-12-05-6726825d.pth \
      --out inception_fid.npz
"""

import argparse
import os
import sys
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048
# sFID's features: the ADM suite takes `mixed_6/conv:0` of the TF graph (the 1x1 branch of
# its 7th mixed block, torch's Mixed_6d.branch1x1, after BN and ReLU), first 7 channels,
# 17 x 17 x 7 flattened in (H, W, C) order.
SPATIAL_CHANNELS = 7
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# Features feed a covariance; keep float32 matmuls exact on GPUs/TPUs too.
_PRECISION = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
  """conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU, torch's BasicConv2d."""
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, strides=self.strides,
                padding=[(p, p) for p in self.padding], use_bias=False,
                precision=_PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x):
  """3x3, stride 1, pad 1, padding not counted (TF semantics)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
  """Factorised 7x7 convolutions. Returns the block output and its 1x1 branch."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """Expanded filter bank; pool = "avg" (Mixed_7b) or "max" (Mixed_7c, the FID graph)."""
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_same(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """x: (B, 299, 299, 3) in [-1, 1] -> {"pool": (B, 2048), "logits": (B, 1008),
  "spatial": (B, 2023)} (`SPATIAL_FEATURES`, sFID's)."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_valid(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_valid(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x, branch1x1 = InceptionC(c7, name=name)(x)
      if name == "Mixed_6d":
        spatial = branch1x1[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, precision=_PRECISION, name="fc")(pool)
    return {"pool": pool, "logits": logits, "spatial": spatial}


# ----------------------------------------------------------------------------- input


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of torch's bilinear resize, align_corners=False.

  src = (dst + 0.5) * in / out - 0.5, clamped below at 0; no antialiasing.
  """
  scale = np.float32(size_in / size_out)
  src = ((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale
         - np.float32(0.5)).clip(min=0)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  matrix = np.zeros((size_out, size_in), np.float32)
  np.add.at(matrix, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(matrix, (np.arange(size_out), hi), frac)
  return matrix


def resize_bilinear(images, size: int = INPUT_SIZE):
  """(B, H, W, C) float -> (B, size, size, C), as F.interpolate(bilinear, align_corners=False)."""
  _, h, w, _ = images.shape
  rows = jnp.asarray(_bilinear_matrix(h, size))
  cols = jnp.asarray(_bilinear_matrix(w, size))
  return jnp.einsum("oh,bhwc,pw->bopc", rows, images, cols, precision=_PRECISION)


def preprocess(images_uint8, size: int = INPUT_SIZE):
  """(B, H, W, 3) uint8 -> (B, size, size, 3) float32 in [-1, 1] (resize, then scale)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return 2.0 * resize_bilinear(x, size) - 1.0


# ----------------------------------------------------------------------------- weights


def variable_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
  """{"params/Mixed_5b/branch1x1/conv/kernel": shape, ...} without allocating anything."""
  abstract = jax.eval_shape(FIDInceptionV3(num_classes).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: v.shape for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}


def random_variables(seed: int = 0, num_classes: int = NUM_CLASSES) -> dict:
  """Random variables of the right structure, for tests and dry runs (numpy, no compile).

  He-normal kernels and mild BatchNorm statistics keep activations O(1) through the
  ~100 layers, so random-weight features are informative enough to test the pipeline.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in variable_shapes(num_classes).items():
    if name.endswith("conv/kernel"):
      value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
    elif name.endswith("fc/kernel"):
      value = rng.normal(0, np.sqrt(1.0 / shape[0]), shape)
    elif name.endswith(("bn/scale", "bn/var")):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # biases, running means
      value = rng.normal(0, 0.1, shape)
    flat[name] = value.astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


# torch leaf name -> (collection, Flax leaf name)
_LEAVES = {"conv.weight": ("params", "conv/kernel"), "bn.weight": ("params", "bn/scale"),
           "bn.bias": ("params", "bn/bias"), "bn.running_mean": ("batch_stats", "bn/mean"),
           "bn.running_var": ("batch_stats", "bn/var"), "fc.weight": ("params", "fc/kernel"),
           "fc.bias": ("params", "fc/bias")}


class InceptionConversionError(ValueError):
  """A state_dict does not have the FID Inception's keys or shapes."""


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid FIDInceptionV3 state_dict -> Flax variables {"params", "batch_stats"}.

  Conv kernels (O, I, kh, kw) -> (kh, kw, I, O); the Linear (out, in) -> (in, out);
  BatchNorm running statistics go to "batch_stats"; num_batches_tracked is dropped.
  Every expected entry must be present with its shape, and nothing else.
  """
  flat = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    value = np.asarray(value, np.float32)
    parts = key.split(".")
    leaf = ".".join(parts[-2:])
    if leaf not in _LEAVES or (leaf.startswith("fc.") and len(parts) != 2):
      raise InceptionConversionError(f"Unexpected key {key!r} (not part of the FID Inception).")
    collection, flax_leaf = _LEAVES[leaf]
    if leaf == "conv.weight":
      value = value.transpose(2, 3, 1, 0)
    elif leaf == "fc.weight":
      value = value.T
    flat["/".join([collection] + parts[:-2] + [flax_leaf])] = value
  expected = variable_shapes()
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  shapes = sorted(k for k in set(flat) & set(expected) if flat[k].shape != expected[k])
  if missing or extra or shapes:
    raise InceptionConversionError(
        f"Not the FID Inception state_dict: missing {missing[:4]} ({len(missing)}), "
        f"unexpected {extra[:4]} ({len(extra)}), wrong shapes "
        f"{[(k, flat[k].shape, expected[k]) for k in shapes[:4]]}.")
  return traverse_util.unflatten_dict(flat, sep="/")


def save_variables(path: str, variables) -> None:
  """Writes variables as one flat .npz ("params/Mixed_5b/.../kernel": array)."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables), sep="/")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, **flat)


def load_variables(path: str) -> dict:
  """Reads `save_variables` output, checking it has the FID Inception's structure."""
  with np.load(path) as data:
    flat = {k: data[k] for k in data.files}
  expected = variable_shapes()
  if {k: v.shape for k, v in flat.items()} != expected:
    raise InceptionConversionError(
        f"{path} is not a converted FID Inception (run `python -m "
        "pixnerd_jax.evaluation.inception convert` on " + WEIGHTS_FILE + ").")
  return traverse_util.unflatten_dict(flat, sep="/")


def convert_file(src: str, out: str) -> None:
  """The pytorch-fid .pth (a plain state_dict) -> our .npz."""
  import torch  # pylint: disable=g-import-not-at-top  (only the converter needs torch)
  state_dict = torch.load(src, map_location="cpu", weights_only=True)
  save_variables(out, convert_state_dict({k: v.numpy() for k, v in state_dict.items()}))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pixnerd_jax.evaluation.inception",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help=f"{WEIGHTS_FILE} -> .npz")
  conv.add_argument("src")
  conv.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  try:
    convert_file(args.src, args.out)
  except (InceptionConversionError, OSError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
