"""The ADM evaluation suite's five metrics in JAX: FID, sFID, Inception Score, precision, recall.

  python -m pixnerd_jax.evaluation.fid --samples=out/samples_50000x256x256x3.npz \
      --reference=VIRTUAL_imagenet256_labeled.npz --inception=inception_fid.npz
  FID 2.1500  sFID 4.5000  IS 300.00  Precision 0.8100  Recall 0.5800  (50000 samples)

As `evaluations/evaluator.py` of openai/guided-diffusion (the suite DiT, SiT, REPA and
PixNerd report with) computes them from the FID InceptionV3 (`inception.py`):
FID is the Fréchet distance between Gaussians fitted to the 2048-d pool features; sFID
the same on the spatial features (the first 7 channels of Mixed_6d's 1x1 branch, the
graph's `mixed_6/conv`, 17x17x7); the Inception Score is exp(E KL(p(y|x) || p(y))) of
the softmax of pool @ W (the classifier weights without its bias, as the suite does) in
splits of 5,000 samples, averaged; precision and recall are the k=3 manifold metrics of
`precision_recall.py` on pool features.

The reference is an ADM batch as published (VIRTUAL_imagenet256_labeled.npz: `mu`/
`sigma` and `mu_s`/`sigma_s` are used as stored, its images `arr_0` give the pool
features precision/recall need), an .npz of images (`arr_0`) or a folder of same-size
PNG/JPEG files, whose statistics are computed here. The metrics print as one line and
are written as JSON (--json).

`--verify_metrics=FILE.npz` checks the metric code against numbers the suite computed
from given features (the format of shared/reference/fixtures/adm_metrics_tiny.npz).

Note: ADM's reference statistics come from the TF graph (its own resize); this network
is pytorch-fid's port of the same weights, so features agree with the TF graph up to
pytorch-fid's known small discrepancy. Publish-grade numbers: run the ADM evaluation
suite on the same .npz.
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import zipfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from pixnerd_jax.runtime import console
from pixnerd_jax.evaluation import frechet
from pixnerd_jax.evaluation import inception
from pixnerd_jax.evaluation import precision_recall

DEFAULT_BATCH = 100
# The suite's Inception Score splits: consecutive groups of this many samples.
ADM_SPLIT_SIZE = 5000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ----------------------------------------------------------------------------- images in


def iter_npz_images(path: str, batch_size: int, key: str = "arr_0"):
  """Yields uint8 (b, H, W, C) batches of an .npz member without loading all of it.

  50k samples at 256 px are 9.8 GB; this reads the zip member sequentially.
  """
  with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    if fortran or dtype != np.uint8 or len(shape) != 4:
      raise ValueError(f"{path}:{key} must be uint8 NHWC in C order, got {dtype} {shape}.")
    per_image = int(np.prod(shape[1:]))
    for start in range(0, shape[0], batch_size):
      n = min(batch_size, shape[0] - start)
      yield np.frombuffer(f.read(n * per_image), np.uint8).reshape((n,) + tuple(shape[1:]))


def iter_folder_images(folder: str, batch_size: int):
  """Yields uint8 RGB batches of the image files in `folder` (sorted; all one size)."""
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
  for start in range(0, len(names), batch_size):
    batch = []
    for name in names[start:start + batch_size]:
      with Image.open(os.path.join(folder, name)) as img:
        batch.append(np.asarray(img.convert("RGB")))
    if len({b.shape for b in batch}) != 1:
      raise ValueError(f"Images in {folder} differ in size; resize/crop them first.")
    yield np.stack(batch)


def _batches(images, batch_size: int):
  if isinstance(images, str):
    return (iter_folder_images(images, batch_size) if os.path.isdir(images)
            else iter_npz_images(images, batch_size))
  images = np.asarray(images)
  return (images[i:i + batch_size] for i in range(0, len(images), batch_size))


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=4)
def _network_fn(mesh: Mesh):
  """jitted (variables, uint8 (B, H, W, 3)) -> {"pool" (B, 2048), "logits" (B, 1008),
  "spatial" (B, 2023), "adm_logits" (B, 1008)}."""
  net = inception.FIDInceptionV3()

  def fn(variables, images):
    out = net.apply(variables, inception.preprocess(images))
    # The suite's softmax input: pool @ the classifier's weights, no bias (it takes the
    # graph's softmax/logits/MatMul operand).
    out["adm_logits"] = jnp.dot(out["pool"], variables["params"]["fc"]["kernel"],
                                precision=jax.lax.Precision.HIGHEST)
    return out

  batch = NamedSharding(mesh, P("batch"))
  return jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), batch), out_shardings=batch)


def inception_features(variables, images, batch_size: int = DEFAULT_BATCH) -> dict:
  """Inception outputs of uint8 images.

  Args:
    variables: converted FID Inception variables (`inception.load_variables`).
    images: uint8 (N, H, W, 3) array, an .npz path (`arr_0`) or a folder of images.
    batch_size: images per call on this host, split over its local devices; the last
      batch is padded so there is one compiled shape per image size.
  Returns:
    float32 arrays: "pool" (N, 2048), "spatial" (N, 2023), "logits" (N, 1008) (with the
    classifier bias), "adm_logits" (N, 1008) (without, the suite's IS input).
  """
  devices = jax.local_devices()
  mesh = Mesh(np.array(devices), ("batch",))
  batch_size = -(-batch_size // len(devices)) * len(devices)
  fn = _network_fn(mesh)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  parts = {}
  for i, batch in enumerate(_batches(images, batch_size)):
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
      raise ValueError(f"Expected uint8 (N, H, W, 3) images, got {batch.dtype} {batch.shape}.")
    n = len(batch)
    # Fewer images than one batch: run them at their own size (still one compile).
    size = batch_size if i or n == batch_size else -(-n // len(devices)) * len(devices)
    padded = np.concatenate([batch, np.repeat(batch[-1:], size - n, 0)])
    for key, value in fn(variables, padded).items():
      parts.setdefault(key, []).append(np.asarray(value, np.float32)[:n])
  if not parts:
    raise ValueError("No images to evaluate.")
  return {key: np.concatenate(value) for key, value in parts.items()}


def inception_outputs(variables, images, batch_size: int = DEFAULT_BATCH):
  """pool (N, 2048) float64 and logits (N, 1008) float32 of uint8 images
  (`inception_features`, for callers that need only these)."""
  out = inception_features(variables, images, batch_size)
  return out["pool"].astype(np.float64), out["logits"]


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigh") -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians.

  method "sqrtm" is `frechet.frechet_distance` (scipy's sqrtm, as pytorch-fid and the
  ADM suite). "eigh" computes the same trace from symmetric eigendecompositions:
  Tr (S1 S2)^(1/2) = sum sqrt eig(S1^(1/2) S2 S1^(1/2)), which is exact for PSD inputs,
  ~10x faster at 2048-d and does not stall on the singular covariances of fewer samples
  than features (sqrtm took a minute there on a 2-core CPU).
  """
  if method == "sqrtm":
    return frechet.frechet_distance(mu1, sigma1, mu2, sigma2)
  if method != "eigh":
    raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}.")
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f"Mismatched statistics: {mu1.shape} vs {mu2.shape}, "
                     f"{s1.shape} vs {s2.shape}.")
  w, v = np.linalg.eigh((s1 + s1.T) / 2)
  root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
  middle = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig.clip(min=0))))


def frechet_distance_from_features(features, mu2, sigma2, method: str = "eigh") -> float:
  """Fréchet distance between the Gaussian of `features` (N, F) and (mu2, sigma2).

  With fewer samples than features (a quick evaluation), S1 = X^T X / (N - 1) for the
  centred X has rank < N, and the non-zero eigenvalues of S1 S2 are those of the N x N
  matrix X S2 X^T / (N - 1): exact, and it avoids decomposing a singular 2048 x 2048
  matrix (slow: LAPACK crawls through the null space, tens of seconds on a CPU).
  """
  features = np.asarray(features, np.float64)
  mu1, sigma1 = frechet.feature_statistics(features)
  if method != "eigh" or len(features) > features.shape[1]:
    return frechet_distance(mu1, sigma1, mu2, sigma2, method=method)
  mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
  if mu2.shape != mu1.shape or sigma2.shape != sigma1.shape:
    raise ValueError(f"Mismatched statistics: {mu1.shape} vs {mu2.shape}, "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  x = features - mu1
  gram = x @ sigma2 @ x.T / (len(x) - 1)
  eig = np.linalg.eigvalsh((gram + gram.T) / 2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2 * np.sum(np.sqrt(eig.clip(min=0))))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """Mean and std over `splits` of exp(mean_x KL(p(y|x) || p(y))) from (N, K) logits."""
  logits = np.asarray(logits, np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = np.log(np.exp(part).mean(0))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- reference


def adm_inception_score(logits, split_size: int = ADM_SPLIT_SIZE) -> float:
  """The suite's Inception Score of (N, K) softmax inputs: mean over consecutive splits
  of `split_size` samples (the last may be shorter) of exp(mean_x KL(p(y|x) || p(y)))."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not len(logits):
    raise ValueError(f"Need (N >= 1, classes) logits, got {logits.shape}.")
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  scores = []
  for start in range(0, len(log_p), split_size):
    part = log_p[start:start + split_size]
    log_marginal = np.log(np.exp(part).mean(0))
    scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
  return float(np.mean(scores))


@dataclasses.dataclass
class Reference:
  """What the metrics compare samples with: pool statistics mu (2048,), sigma (2048,
  2048); spatial ones mu_s (2023,), sigma_s (2023, 2023) (None: no sFID); pool features
  (N, 2048) (None: no precision/recall)."""
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: np.ndarray | None = None
  sigma_s: np.ndarray | None = None
  pool: np.ndarray | None = None


def load_reference(reference, variables=None, batch_size: int = DEFAULT_BATCH) -> Reference:
  """The reference batch.

  Args:
    reference: an ADM batch .npz (`mu`/`sigma`, optionally `mu_s`/`sigma_s`, used as
      stored; its images `arr_0`, if any, give the pool features for precision/recall),
      an .npz of uint8 images in `arr_0`, a folder of images, a uint8 array, or a
      (mu, sigma) tuple (FID only).
    variables: Inception variables, needed when anything is computed from images.
  """
  if isinstance(reference, Reference):
    return reference
  if isinstance(reference, tuple):
    mu, sigma = reference
    return Reference(np.asarray(mu, np.float64), np.asarray(sigma, np.float64))
  stored = {}
  if isinstance(reference, str) and not os.path.isdir(reference):
    with np.load(reference) as data:
      stored = {k: data[k].astype(np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s")
                if k in data.files}
      has_images = "arr_0" in data.files
    if not has_images:
      if "mu" not in stored or "sigma" not in stored:
        raise ValueError(f"{reference} has neither mu/sigma nor arr_0 images.")
      return Reference(stored["mu"], stored["sigma"], stored.get("mu_s"), stored.get("sigma_s"))
  if variables is None:
    raise ValueError("Computing reference statistics from images needs the Inception weights.")
  features = inception_features(variables, reference, batch_size)
  if "mu" not in stored or "sigma" not in stored:
    stored["mu"], stored["sigma"] = frechet.feature_statistics(features["pool"])
  if "mu_s" not in stored or "sigma_s" not in stored:
    stored["mu_s"], stored["sigma_s"] = frechet.feature_statistics(features["spatial"])
  return Reference(stored["mu"], stored["sigma"], stored["mu_s"], stored["sigma_s"],
                   features["pool"])


def load_reference_stats(reference, variables=None, batch_size: int = DEFAULT_BATCH):
  """(mu (2048,), sigma (2048, 2048)) of the reference (see `load_reference`)."""
  ref = load_reference(reference, variables, batch_size)
  return ref.mu, ref.sigma


def metrics_from_features(pool, spatial, adm_logits, reference: Reference,
                          split_size: int = ADM_SPLIT_SIZE, method: str = "eigh") -> dict:
  """The suite's metrics of samples given their features.

  Args:
    pool: (N, 2048) sample pool features; spatial: (N, 2023) or None; adm_logits:
      (N, 1008) softmax inputs (pool @ W).
    reference: `Reference`; sFID needs its mu_s/sigma_s, precision/recall its pool.
  Returns:
    {"fid", "sfid", "inception_score", "precision", "recall", "num_samples"}, without
    the metrics the reference cannot give.
  """
  out = {"fid": frechet_distance_from_features(pool, reference.mu, reference.sigma,
                                               method=method)}
  if spatial is not None and reference.mu_s is not None:
    out["sfid"] = frechet_distance_from_features(spatial, reference.mu_s, reference.sigma_s,
                                                 method=method)
  out["inception_score"] = adm_inception_score(adm_logits, split_size)
  if reference.pool is not None:
    if len(pool) <= precision_recall.K or len(reference.pool) <= precision_recall.K:
      logging.warning("Precision/recall skipped: they need more than %d samples and "
                      "reference images.", precision_recall.K)
    else:
      pr = precision_recall.precision_recall(reference.pool, pool)
      out["precision"], out["recall"] = pr["precision"], pr["recall"]
  out["num_samples"] = int(len(pool))
  return out


def fid_from_samples(samples_uint8, inception_params, reference_stats,
                     batch_size: int = DEFAULT_BATCH, split_size: int = ADM_SPLIT_SIZE,
                     method: str = "eigh") -> dict:
  """The suite's metrics of samples (`metrics_from_features`).

  Args:
    samples_uint8: (N, H, W, 3) uint8 (e.g. `images.to_uint8` of model outputs), or an
      .npz path / image folder.
    inception_params: FID Inception variables (`inception.load_variables(path)`) or the
      path of the converted .npz.
    reference_stats: a `Reference`, (mu, sigma) (FID and IS only), or anything
      `load_reference` accepts.
    method: how to take the matrix square root (`frechet_distance`).
  """
  if isinstance(inception_params, str):
    inception_params = inception.load_variables(inception_params)
  reference = load_reference(reference_stats, inception_params, batch_size)
  features = inception_features(inception_params, samples_uint8, batch_size)
  return metrics_from_features(features["pool"], features["spatial"], features["adm_logits"],
                               reference, split_size, method)


# ----------------------------------------------------------------------------- reporting

_LINE = (("fid", "FID", "{:.4f}"), ("sfid", "sFID", "{:.4f}"),
         ("inception_score", "IS", "{:.2f}"), ("precision", "Precision", "{:.4f}"),
         ("recall", "Recall", "{:.4f}"))


def metrics_line(metrics: dict) -> str:
  """The paper tables' five columns in one line ("n/a" where the reference lacks data)."""
  cells = [f"{name} " + (fmt.format(metrics[key]) if key in metrics else "n/a")
           for key, name, fmt in _LINE]
  return "  ".join(cells) + f"  ({metrics.get('num_samples', '?')} samples)"


# (relative tolerance, absolute tolerance in units of 1/N) of --verify_metrics
_TOLERANCE = {"fid": (1e-3, None), "sfid": (1e-3, None), "inception_score": (1e-4, None),
              "precision": (None, "sample"), "recall": (None, "ref")}
_VERIFY_KEYS = ("ref_pool", "sample_pool", "ref_spatial", "sample_spatial", "sample_logits",
                "fid", "sfid", "inception_score", "precision", "recall")


def verify_metrics(path: str, method: str = "eigh") -> tuple[list[dict], bool]:
  """Recomputes the five metrics from the features in `path` and compares them with the
  suite's values stored there. Returns (one row per metric, all within tolerance)."""
  with np.load(path) as data:
    missing = [k for k in _VERIFY_KEYS if k not in data.files]
    if missing:
      raise ValueError(f"{path} lacks {', '.join(missing)}.")
    d = {k: data[k] for k in _VERIFY_KEYS}
  ref_pool = d["ref_pool"].astype(np.float32)
  mu_s, sigma_s = frechet.feature_statistics(d["ref_spatial"])
  reference = Reference(*frechet.feature_statistics(ref_pool), mu_s, sigma_s, ref_pool)
  ours = metrics_from_features(d["sample_pool"].astype(np.float32),
                               d["sample_spatial"].astype(np.float32), d["sample_logits"],
                               reference, method=method)
  counts = {"sample": len(d["sample_pool"]), "ref": len(ref_pool)}
  rows, ok = [], True
  for key, (rel, per) in _TOLERANCE.items():
    theirs, mine = float(d[key]), ours[key]
    if rel is not None:
      diff, limit = abs(mine - theirs) / max(abs(theirs), 1e-12), rel
      unit = "relative"
    else:
      diff, limit = abs(mine - theirs), 1.0 / counts[per] + 1e-12
      unit = f"absolute (1/{counts[per]})"
    rows.append({"metric": key, "ours": mine, "suite": theirs, "difference": diff,
                 "tolerance": limit, "unit": unit, "ok": diff <= limit})
    ok = ok and diff <= limit
  return rows, ok


class InputError(ValueError):
  """A file given on the command line does not read; the message names the flag."""


_READ_ERRORS = (ValueError, OSError, KeyError, zipfile.BadZipFile)
_WHAT_TO_PASS = {
    "--inception": "pass the .npz written by `python -m pixnerd_jax.evaluation.inception "
                   "convert`",
    "--reference": "pass an ADM batch .npz (mu/sigma, arr_0), an .npz of uint8 images "
                   "(arr_0) or an image folder",
    "--samples": "pass the .npz written by `python -m pixnerd_jax.sample` (arr_0 uint8 "
                 "NHWC) or an image folder",
    "--verify_metrics": "pass an .npz of features and the suite's metrics in the format "
                        "of adm_metrics_tiny.npz (ref_pool, sample_pool, ref_spatial, "
                        "sample_spatial, sample_logits, fid, sfid, inception_score, "
                        "precision, recall)",
}


@contextlib.contextmanager
def _reading(flag: str, path: str):
  try:
    yield
  except InputError:
    raise
  except _READ_ERRORS as e:
    raise InputError(f"{flag}={path} does not read: {_WHAT_TO_PASS[flag]}. "
                     f"({console.summary(e, 200)})") from e


def _print_verification(rows: list[dict], path: str, ok: bool) -> None:
  print(f"{'metric':<16} {'ours':>20} {'suite':>20} {'difference':>11}  tolerance")
  for r in rows:
    print(f"{r['metric']:<16} {r['ours']:>20.12g} {r['suite']:>20.12g} {r['difference']:>11.3g}"
          f"  {r['tolerance']:.3g} {r['unit']}{'' if r['ok'] else '  EXCEEDED'}")
  print(f"{'OK' if ok else 'FAILED'}: our metrics against the suite's in {path}")


def _default_json(samples: str) -> str:
  """samples/x.npz -> samples/x.metrics.json; a folder dir -> dir.metrics.json."""
  base = samples.rstrip(os.sep)
  if not os.path.isdir(base):
    base = os.path.splitext(base)[0]
  return base + ".metrics.json"


@console.entry_point(known=(InputError, OSError), oom_hint="lower --batch_size")
def main(argv=None) -> int:
  console.quiet_start()
  parser = argparse.ArgumentParser(prog="python -m pixnerd_jax.evaluation.fid",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--samples", help=".npz (arr_0 uint8 NHWC) or folder")
  parser.add_argument("--reference",
                      help="ADM batch .npz (mu/sigma, mu_s/sigma_s, arr_0), .npz with arr_0 "
                      "images, or an image folder")
  parser.add_argument("--inception",
                      help="converted weights (python -m pixnerd_jax.evaluation.inception "
                      "convert)")
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH)
  parser.add_argument("--split_size", type=int, default=ADM_SPLIT_SIZE,
                      help="Inception Score: samples per split (the suite's 5000)")
  parser.add_argument("--json", help="write the metrics here (default: beside --samples, "
                      "<samples>.metrics.json)")
  parser.add_argument("--save_stats",
                      help="also write the samples' mu/sigma and mu_s/sigma_s to this .npz")
  parser.add_argument("--method", default="eigh", choices=["eigh", "sqrtm"],
                      help="matrix square root: eigh (fast, exact for PSD) or scipy sqrtm "
                      "(pytorch-fid/ADM)")
  parser.add_argument("--verify_metrics", metavar="FILE.npz",
                      help="check the metric code against the suite's numbers in FILE.npz "
                      "(features and metrics, as shared/reference/fixtures/"
                      "adm_metrics_tiny.npz); exits 1 beyond tolerance")
  parser.add_argument("--verbose", action="store_true",
                      help="print the full traceback of an error")
  args = parser.parse_args(argv)
  if args.verbose:
    logging.set_verbosity(logging.DEBUG)
  if args.verify_metrics:
    with _reading("--verify_metrics", args.verify_metrics):
      rows, ok = verify_metrics(args.verify_metrics, args.method)
    _print_verification(rows, args.verify_metrics, ok)
    return 0 if ok else 1
  missing = [f"--{f}" for f in ("samples", "reference", "inception") if not getattr(args, f)]
  if missing:
    raise InputError(f"{', '.join(missing)} missing: pass --samples, --reference and "
                     "--inception (or --verify_metrics=FILE.npz alone).")
  if args.split_size < 1:
    raise InputError(f"--split_size={args.split_size} must be >= 1 (the suite uses 5000).")
  with _reading("--inception", args.inception):
    variables = inception.load_variables(args.inception)
  with _reading("--reference", args.reference):
    reference = load_reference(args.reference, variables, args.batch_size)
  with _reading("--samples", args.samples):
    features = inception_features(variables, args.samples, args.batch_size)
  if args.save_stats:
    mu, sigma = frechet.feature_statistics(features["pool"])
    mu_s, sigma_s = frechet.feature_statistics(features["spatial"])
    with open(args.save_stats, "wb") as f:
      np.savez(f, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
  metrics = metrics_from_features(features["pool"], features["spatial"],
                                  features["adm_logits"], reference, args.split_size,
                                  args.method)
  print(metrics_line(metrics))
  json_path = args.json or _default_json(args.samples)
  with open(json_path, "w") as f:
    json.dump(metrics, f, indent=1)
  print(f"wrote {json_path}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
