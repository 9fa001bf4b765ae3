"""Improved precision and recall (k-NN manifolds) as the ADM evaluation suite computes them.

The suite (openai/guided-diffusion `evaluations/evaluator.py`, its `ManifoldEstimator`)
fits a ball around every pool feature whose squared radius is the distance to its k-th
nearest neighbour in its own set (k = 3; the point itself is neighbour 0), and reports

  precision = fraction of samples inside some reference ball,
  recall    = fraction of references inside some sample ball.

Squared distances are |u|^2 - 2 u.v + |v|^2, clipped at 0, computed in float16 and
redone in float32 for any 10,000 x 10,000 block where a float16 value is not finite. The
counts hinge on `distance <= radius` between float16 numbers, so ties are common and the
float16 rounding has to be the suite's to land within a sample of its numbers: every
float16 operation of the TF graph (square, sum, matmul, subtract, add) rounds here too,
and the row sums of squares accumulate in the order of the TF CPU kernel (Eigen's
reduction, see `_tf_half_row_sum`), which is what the suite ran on for
`adm_metrics_tiny.npz`.

Work is blockwise on device: rows of a block are sharded over the local devices, so
50,000 samples against a 10,000-image reference need no more than a few row chunks of
10,000 distances in memory at a time.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

K = 3
# The suite's row and column batch: its float16 -> float32 fallback is decided per block.
SUITE_BLOCK = 10_000
DEFAULT_ROW_CHUNK = 1024
# Eigen's reduction: halves above this many values, packets of 8 float16 in 4 accumulators.
_LEAF = 1024
_PACKET = 8
_ACCUMULATORS = 4


def _half(x):
  """Rounds float32 to the nearest float16 value (kept in float32; XLA keeps this op)."""
  return lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)


def _tf_half_row_sum(x):
  """(R, n) float16 values (as float32) -> (R,) their row sums as TF's CPU kernel rounds.

  Eigen splits a row longer than 1024 values in two (at a packet boundary) and adds the
  halves' sums; within a leaf it adds 8-wide packets into 4 float16 accumulators in turn,
  folds the accumulators into the first one by one, sums that packet's 8 lanes in
  float32, and adds any values past the last packet one at a time.
  """
  rows, n = x.shape
  if n > _LEAF:
    split = -(-(-(-n // 2)) // _PACKET) * _PACKET  # ceil(n / 2), up to a packet
    return _half(_tf_half_row_sum(x[:, :split]) + _tf_half_row_sum(x[:, split:]))
  width = _ACCUMULATORS * _PACKET
  quad, full = n // width * width, n // _PACKET * _PACKET

  def add(acc, step):
    return _half(acc + step), None

  # (steps, R, 4, 8): step i feeds accumulator i % 4 with packet i.
  steps = x[:, :quad].reshape(rows, quad // width, _ACCUMULATORS, _PACKET).transpose(1, 0, 2, 3)
  acc, _ = lax.scan(add, jnp.zeros((rows, _ACCUMULATORS, _PACKET), jnp.float32), steps)
  first = acc[:, 0]
  for start in range(quad, full, _PACKET):
    first = _half(first + x[:, start:start + _PACKET])
  for i in range(1, _ACCUMULATORS):
    first = _half(first + acc[:, i])
  tail = jnp.zeros((rows,), jnp.float32)
  for j in range(full, n):
    tail = _half(tail + x[:, j])
  return _half(tail + _half(jnp.sum(first, axis=1)))


@functools.partial(jax.jit, static_argnames="half")
def squared_norms(x, half: bool):
  """(N, D) float32 -> (N,) |x|^2 as the suite computes it (float16: `_tf_half_row_sum`)."""
  if not half:
    return jnp.sum(jnp.square(x), axis=1)
  x = _half(x)
  return _tf_half_row_sum(_half(jnp.square(x)))


def pairwise_distances(u, v, norm_u, norm_v, half: bool):
  """(R, D), (C, D) float32 and their `squared_norms` -> (R, C) float32 squared
  distances, the suite's formula.

  half: compute in float16 as the suite does first (inputs cast, every op rounded);
  otherwise float32 (its fallback).
  """
  hi = jax.lax.Precision.HIGHEST
  if not half:
    return jnp.maximum(norm_u[:, None] - 2 * jnp.dot(u, v.T, precision=hi) + norm_v[None], 0.0)
  # Products of float16 values are exact in float32; the sum is rounded once, as the
  # kernel's float32 accumulation does.
  dots = _half(jnp.dot(_half(u), _half(v).T, precision=hi))
  return jnp.maximum(_half(_half(norm_u[:, None] - 2 * dots) + norm_v[None]), 0.0)


@functools.lru_cache(maxsize=8)
def _radii_fn(mesh: Mesh, k: int, half: bool):
  """(rows (R, D), their norms (R,), cols (C, D), their norms (C,)) -> the k+1 smallest
  distances per row (R, k+1), and whether all distances are finite."""

  def fn(rows, row_norms, cols, col_norms):
    d = pairwise_distances(rows, cols, row_norms, col_norms, half)
    smallest = -lax.top_k(-d, min(k + 1, d.shape[1]))[0]
    return smallest, jnp.all(jnp.isfinite(d))

  rows, rep = NamedSharding(mesh, P("rows")), NamedSharding(mesh, P())
  return jax.jit(fn, in_shardings=(rows, rows, rep, rep), out_shardings=(rows, rep))


@functools.lru_cache(maxsize=8)
def _inside_fn(mesh: Mesh, half: bool):
  """(ref rows, norms, radii, sample cols, norms, radii) -> which ref rows lie in some
  sample ball (R,), which samples lie in some ref ball (C,), all distances finite."""

  def fn(rows, row_norms, row_radii, cols, col_norms, col_radii):
    d = pairwise_distances(rows, cols, row_norms, col_norms, half)
    rows_in = jnp.any(d <= col_radii[None], axis=1)
    cols_in = jnp.any(d <= row_radii[:, None], axis=0)
    return rows_in, cols_in, jnp.all(jnp.isfinite(d))

  rows, rep = NamedSharding(mesh, P("rows")), NamedSharding(mesh, P())
  return jax.jit(fn, in_shardings=(rows,) * 3 + (rep,) * 3, out_shardings=(rows, rep, rep))


class _Blocks:
  """Feature rows split as the suite does (blocks of SUITE_BLOCK), each block in row
  chunks of one padded size (one compile), sharded over the local devices."""

  def __init__(self, features, row_chunk: int):
    self.features = np.asarray(features, np.float32)
    self.mesh = Mesh(np.array(jax.local_devices()), ("rows",))
    devices = self.mesh.devices.size
    rows = min(len(self.features), SUITE_BLOCK)
    self.chunk = -(-min(row_chunk, rows) // devices) * devices
    self._norms = {}

  def norms(self, half: bool) -> np.ndarray:
    if half not in self._norms:
      self._norms[half] = np.asarray(squared_norms(self.features, half))
    return self._norms[half]

  def replicated(self, *arrays):
    return [jax.device_put(a, NamedSharding(self.mesh, P())) for a in arrays]

  def chunks(self, r0: int, r1: int, *per_row):
    """Yields (start, stop, padded rows of features and of each per_row array)."""
    for start in range(r0, r1, self.chunk):
      stop = min(start + self.chunk, r1)
      padded = [_pad_rows(a[start:stop], self.chunk) for a in (self.features,) + per_row]
      yield start, stop, padded


def _pad_rows(x, size: int):
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)]) if size > len(x) else x


def _per_suite_block(n_rows: int, n_cols: int, run_block):
  """Calls run_block(r0, r1, c0, c1, half) per suite block, in float16 first and again in
  float32 where it reports a non-finite float16 distance."""
  for r0 in range(0, n_rows, SUITE_BLOCK):
    r1 = min(r0 + SUITE_BLOCK, n_rows)
    for c0 in range(0, n_cols, SUITE_BLOCK):
      c1 = min(c0 + SUITE_BLOCK, n_cols)
      if not run_block(r0, r1, c0, c1, True):
        run_block(r0, r1, c0, c1, False)


def manifold_radii(features, k: int = K, row_chunk: int = DEFAULT_ROW_CHUNK) -> np.ndarray:
  """(N, D) features -> (N,) float32 squared distance to the k-th nearest neighbour
  (the point itself counts as the 0th), as the suite's `manifold_radii`."""
  blocks = _Blocks(features, row_chunk)
  n = len(blocks.features)
  if n <= k:
    raise ValueError(f"Precision/recall need more than k={k} feature vectors, got {n}.")
  # The k+1 smallest of each row per column block, merged over column blocks at the end.
  candidates = [[] for _ in range(-(-n // SUITE_BLOCK))]

  def run_block(r0, r1, c0, c1, half):
    fn = _radii_fn(blocks.mesh, k, half)
    norms = blocks.norms(half)
    cols = blocks.replicated(blocks.features[c0:c1], norms[c0:c1])
    parts = []
    for start, stop, (rows, row_norms) in blocks.chunks(r0, r1, norms):
      smallest, finite = fn(rows, row_norms, *cols)
      if half and not bool(finite):
        return False
      parts.append(np.asarray(smallest)[:stop - start])
    candidates[r0 // SUITE_BLOCK].append(np.concatenate(parts))
    return True

  _per_suite_block(n, n, run_block)
  merged = np.concatenate([np.concatenate(c, axis=1) for c in candidates])
  return np.partition(merged, k, axis=1)[:, k]


def evaluate_pr(ref_features, ref_radii, sample_features, sample_radii,
                row_chunk: int = DEFAULT_ROW_CHUNK) -> tuple[float, float]:
  """(precision, recall) from features (N, D), (M, D) and their radii (N,), (M,)."""
  ref = _Blocks(ref_features, row_chunk)
  samples = _Blocks(sample_features, row_chunk)
  ref_radii = np.asarray(ref_radii, np.float32)
  sample_radii = np.asarray(sample_radii, np.float32)
  ref_in = np.zeros(len(ref.features), bool)
  sample_in = np.zeros(len(samples.features), bool)

  def run_block(r0, r1, c0, c1, half):
    fn = _inside_fn(ref.mesh, half)
    cols = ref.replicated(samples.features[c0:c1], samples.norms(half)[c0:c1],
                          sample_radii[c0:c1])
    rows_in, cols_in = np.zeros(r1 - r0, bool), np.zeros(c1 - c0, bool)
    for start, stop, padded in ref.chunks(r0, r1, ref.norms(half), ref_radii):
      r_in, c_in, finite = fn(*padded, *cols)
      if half and not bool(finite):
        return False
      rows_in[start - r0:stop - r0] = np.asarray(r_in)[:stop - start]
      cols_in |= np.asarray(c_in)
    ref_in[r0:r1] |= rows_in
    sample_in[c0:c1] |= cols_in
    return True

  _per_suite_block(len(ref.features), len(samples.features), run_block)
  return float(sample_in.mean()), float(ref_in.mean())


def precision_recall(ref_features, sample_features, k: int = K,
                     row_chunk: int = DEFAULT_ROW_CHUNK) -> dict:
  """Improved precision and recall of samples against references.

  Args:
    ref_features: (N, D) reference pool features.
    sample_features: (M, D) sample pool features.
  Returns:
    {"precision", "recall", "ref_radii" (N,), "sample_radii" (M,)}.
  """
  ref = np.asarray(ref_features, np.float32)
  samples = np.asarray(sample_features, np.float32)
  if ref.ndim != 2 or samples.ndim != 2 or ref.shape[1] != samples.shape[1]:
    raise ValueError(f"Need (N, D) and (M, D) features with the same D, got {ref.shape} "
                     f"and {samples.shape}.")
  ref_radii = manifold_radii(ref, k, row_chunk)
  sample_radii = manifold_radii(samples, k, row_chunk)
  precision, recall = evaluate_pr(ref, ref_radii, samples, sample_radii, row_chunk)
  return {"precision": precision, "recall": recall, "ref_radii": ref_radii,
          "sample_radii": sample_radii}
