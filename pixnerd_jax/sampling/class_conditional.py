"""Class-conditional sampling for FID-50K: balanced classes, resumable chunks, one .npz.

Sample i has class (i * num_classes) // N (N / num_classes per class, as the reference's
`idx // 50` for 50k) and starting noise normal(fold_in(key(seed), i)), so the result does
not depend on the batch size, the chunk size or the device count. Work is split into
chunks written as out/samples_XXXXX.npz (uint8 images, labels, indices); a restart skips
complete chunks. Each JAX process takes every process_count-th chunk, its batches split
over its local devices. Finally process 0 streams the chunks into
out/samples_NxHxWxC.npz (`arr_0` uint8 NHWC as the ADM evaluation suite reads it, `arr_1`
labels) and writes a PNG grid.
"""

import functools
import json
import math
import os
import sys
import time
import zipfile

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pixnerd_jax.diffusion import samplers
from pixnerd_jax.evaluation import images as images_lib
from pixnerd_jax.models import count_params
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.sampling import trained_params
from pixnerd_jax.sampling.trained_params import load_checkpoint
from pixnerd_jax.training import dry_run

CHUNK_PATTERN = "samples_{:05d}.npz"
MANIFEST = "run.json"


# ----------------------------------------------------------------------------- plan


def class_labels(indices, num_samples: int, num_classes: int) -> np.ndarray:
  """Balanced classes: sample i gets (i * num_classes) // num_samples (int32)."""
  indices = np.asarray(indices, np.int64)
  return ((indices * num_classes) // num_samples).astype(np.int32)


def chunk_ranges(num_samples: int, chunk_size: int) -> list[tuple[int, int]]:
  """[start, end) sample ranges of the chunk files."""
  if num_samples < 1 or chunk_size < 1:
    raise ValueError(f"num_samples ({num_samples}) and chunk_size ({chunk_size}) must be >= 1.")
  return [(s, min(s + chunk_size, num_samples)) for s in range(0, num_samples, chunk_size)]


def _chunk_is_complete(path: str, start: int, end: int) -> bool:
  """Whether a chunk file exists and holds exactly samples start..end-1."""
  if not epath.Path(path).exists():
    return False
  try:
    with epath.Path(path).open("rb") as f, np.load(f) as data:  # only the small `indices`
      return np.array_equal(data["indices"], np.arange(start, end))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile):
    return False


def _write_atomic_npz(path: str, **arrays) -> None:
  tmp = epath.Path(f"{path}.tmp{os.getpid()}")  # local or gs://
  with tmp.open("wb") as f:
    np.savez(f, **arrays)
  tmp.replace(path)


def manifest(model, settings: dict, *, resolution: int, num_samples: int, seed: int,
             manifest_extra: dict | None = None) -> dict:
  """What must match for chunks in one output directory to belong together (run.json)."""
  return dict(num_samples=num_samples, seed=seed, resolution=resolution,
              num_classes=model.num_classes,
              settings={k: list(v) if isinstance(v, tuple) else v
                        for k, v in settings.items()},
              **(manifest_extra or {}))


def manifest_conflict(out: str, manifest_now: dict) -> str | None:
  """Why out/run.json says its chunks were made with other settings, or None."""
  path = epath.Path(out) / MANIFEST
  if not path.exists():
    return None
  old = json.loads(path.read_text())
  diff = {k: (old.get(k), v) for k, v in manifest_now.items() if old.get(k) != v}
  if diff:
    return (f"{out} holds samples made with other settings ({diff}, as (before, now)). "
            "Use a new --out, or the settings of that run.")
  return None


def _check_manifest(out: str, manifest: dict) -> None:
  """Refuses to mix chunks made with different settings in one output directory."""
  path = epath.Path(out) / MANIFEST
  if path.exists():
    conflict = manifest_conflict(out, manifest)
    if conflict:
      raise ValueError(conflict)
  elif jax.process_index() == 0:
    tmp = epath.Path(f"{path}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(path)


# ----------------------------------------------------------------------------- sampling


def make_sample_fn(model, settings: dict, image_shape: tuple[int, int, int], mesh: Mesh):
  """A jitted (params, seed, indices (B,), labels (B,)) -> float32 (B, H, W, C) samples.

  Noise and SDE keys come from each sample's index, so a sample does not depend on its
  batch. B must be a multiple of the mesh size; the batch is split over the mesh's batch
  axes, the params as `trained_params.param_shardings` (training's rules). Cached: the same model, settings, shape and mesh reuse one compiled function.
  """
  return _cached_sample_fn(model, tuple(sorted(settings.items())), tuple(image_shape), mesh)


@functools.lru_cache(maxsize=8)
def _cached_sample_fn(model, settings: tuple, image_shape: tuple, mesh: Mesh):
  settings = dict(settings)

  def fn(params, seed, indices, labels):
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
    noise = jax.vmap(lambda k: jax.random.normal(k, image_shape, jnp.float32))(keys)
    sde_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    velocity = lambda x, t, y, h=None: model.apply({"params": params}, x, t, y, h)
    return samplers.sample(velocity, noise, labels, key=sde_keys,
                           null_class=model.num_classes, **settings)

  replicated, batch = NamedSharding(mesh, P()), trained_params.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(trained_params.param_shardings(model, mesh), replicated,
                                   batch, batch),
                 out_shardings=batch)


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def generate(out: str, model, params, settings: dict, *, resolution: int, num_samples: int,
             batch_size: int = 64, chunk_size: int = 1000, seed: int = 0,
             manifest_extra: dict | None = None, mesh: Mesh | None = None) -> list[str]:
  """Writes this process's missing chunk files; returns all chunk paths.

  Args:
    out: output directory (shared by all processes).
    settings: keyword arguments of `samplers.sample` (see `settings_from_config`).
    resolution: square image side.
    batch_size: samples per model call on this host (rounded up to the device count).
    mesh: the sampling mesh (`trained_params.sampling_mesh`); default data parallel over
      this process's devices.
  """
  epath.Path(out).mkdir(parents=True, exist_ok=True)  # local or gs://
  image_shape = (resolution, resolution, model.in_channels)
  _check_manifest(out, manifest(model, settings, resolution=resolution,
                                num_samples=num_samples, seed=seed,
                                manifest_extra=manifest_extra))

  mesh = mesh or mesh_lib.create_mesh(None, jax.local_devices())
  devices = mesh.devices.size
  batch_size = math.ceil(batch_size / devices) * devices
  sample_fn = make_sample_fn(model, settings, image_shape, mesh)
  params = jax.device_put(params, trained_params.param_shardings(model, mesh))

  ranges = chunk_ranges(num_samples, chunk_size)
  paths = [os.path.join(out, CHUNK_PATTERN.format(c)) for c in range(len(ranges))]
  mine = [c for c in range(len(ranges)) if c % jax.process_count() == jax.process_index()]
  todo = [c for c in mine if not _chunk_is_complete(paths[c], *ranges[c])]
  logging.debug("%d chunks of %d samples; this process (%d/%d) owns %d, %d already done.",
               len(ranges), chunk_size, jax.process_index(), jax.process_count(),
               len(mine), len(mine) - len(todo))
  total = sum(ranges[c][1] - ranges[c][0] for c in todo)
  done, started = 0, time.perf_counter()
  for n, c in enumerate(todo):
    start, end = ranges[c]
    indices = np.arange(start, end)
    labels = class_labels(indices, num_samples, model.num_classes)
    parts = []
    for b in range(start, end, batch_size):
      # The last batch is padded (with its last index) so every call has one shape.
      idx = np.arange(b, b + batch_size).clip(max=end - 1)
      lab = class_labels(idx, num_samples, model.num_classes)
      x = sample_fn(params, np.int32(seed), idx.astype(np.int32), lab)
      parts.append(images_lib.to_uint8(np.asarray(x))[:min(batch_size, end - b)])
    _write_atomic_npz(paths[c], images=np.concatenate(parts), labels=labels, indices=indices)
    done += end - start
    elapsed = time.perf_counter() - started
    rate = done / elapsed
    print(f"[sample] chunk {c}: {done}/{total} samples, {rate:.2f} img/s, "
          f"ETA {_format_seconds((total - done) / rate)}", file=sys.stderr, flush=True)
  return paths


def assemble(out: str, chunk_paths: list[str], num_samples: int) -> str:
  """Streams the chunks into one ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels).

  Only one chunk is in memory at a time (50k samples at 256 px are 9.8 GB).
  Returns:
    The path, out/samples_{N}x{H}x{W}x{C}.npz.
  """
  with epath.Path(chunk_paths[0]).open("rb") as f, np.load(f) as first:
    sample_shape = first["images"].shape[1:]
  shape = (num_samples,) + tuple(sample_shape)
  path = os.path.join(out, "samples_{}.npz".format("x".join(map(str, shape))))
  labels = []
  tmp = epath.Path(f"{path}.tmp")
  with tmp.open("wb") as out_file, zipfile.ZipFile(out_file, "w", zipfile.ZIP_STORED,
                                                   allowZip64=True) as zf:
    with zf.open("arr_0.npy", "w", force_zip64=True) as f:
      np.lib.format.write_array_header_1_0(
          f, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape})
      written = 0
      for chunk in chunk_paths:
        with epath.Path(chunk).open("rb") as chunk_file, np.load(chunk_file) as data:
          images = data["images"]
          if images.shape[1:] != sample_shape or images.dtype != np.uint8:
            raise ValueError(f"{chunk}: images {images.shape} {images.dtype} do not match "
                             f"{sample_shape} uint8.")
          f.write(np.ascontiguousarray(images).tobytes())
          labels.append(data["labels"])
          written += len(images)
    if written != num_samples:
      raise ValueError(f"The chunks hold {written} samples, expected {num_samples}.")
    with zf.open("arr_1.npy", "w") as f:
      np.lib.format.write_array(f, np.concatenate(labels).astype(np.int64))
  tmp.replace(path)
  return path


GRID_ROWS = 10


def grid_classes(num_classes: int, rows: int = GRID_ROWS) -> np.ndarray:
  """The classes of the grid's rows: every class when there are at most `rows`, else
  `rows` spread evenly over the range (0 and the last included)."""
  if num_classes <= rows:
    return np.arange(num_classes)
  return np.unique(np.linspace(0, num_classes - 1, rows).round().astype(int))


def write_grid(chunk_paths: list[str], ranges: list[tuple[int, int]], num_samples: int,
               num_classes: int, out_png: str, rows: int = GRID_ROWS,
               cols: int = 8) -> tuple[str, np.ndarray]:
  """A grid read from the chunks: a row per class of `grid_classes` among the classes
  sampled (fewer samples than classes sample only some, one image each), its first `cols`
  samples, the class number written left of the row. Returns (path, row classes)."""
  labels = class_labels(np.arange(num_samples), num_samples, num_classes)
  # Labels rise with the index: each class's samples are one run starting at `first`.
  sampled, first, counts = np.unique(labels, return_index=True, return_counts=True)
  picks = grid_classes(len(sampled), rows)
  classes = sampled[picks]
  cols = max(1, min(cols, int(counts[picks].min())))
  wanted = [int(first[p]) + j for p in picks for j in range(cols)]
  tiles = {}
  for path, (start, end) in zip(chunk_paths, ranges):
    inside = [i for i in wanted if start <= i < end]
    if inside:
      with epath.Path(path).open("rb") as f, np.load(f) as data:
        images = data["images"]
        tiles.update({i: images[i - start] for i in inside})
  grid = images_lib.make_grid(np.stack([tiles[i] for i in wanted]), len(classes))
  images_lib.save_png(images_lib.label_rows(grid, [str(c) for c in classes]), out_png)
  return out_png, classes


def _remove_chunks(chunk_paths: list[str]) -> None:
  """The chunks are in the final .npz now; they only served resuming."""
  for path in map(epath.Path, chunk_paths):
    if path.exists():
      path.unlink()


def run(config, checkpoint_path: str, out: str, *, num_samples: int, batch_size: int = 64,
        chunk_size: int = 1000, seed: int = 0, online: bool = False, step: int | None = None,
        grid: bool = True, **sampling_overrides) -> str | None:
  """The whole command; returns the .npz path (process 0) or None (other processes)."""
  settings = samplers.settings_from_config(config.sampling, **sampling_overrides)
  mesh = trained_params.sampling_mesh(config)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step, mesh=mesh)
  logging.debug("Sampling with %s", settings)
  if jax.process_index() == 0:
    print(f"[sample] {num_samples} images at {config.data.resolution} px from {source}",
          file=sys.stderr, flush=True)
  paths = generate(out, model, params, settings, resolution=config.data.resolution,
                   num_samples=num_samples, batch_size=batch_size, chunk_size=chunk_size,
                   seed=seed, manifest_extra=dict(checkpoint=source), mesh=mesh)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("pixnerd_sample_chunks_written")
  if jax.process_index() != 0:
    return None
  missing = [p for p, r in zip(paths, chunk_ranges(num_samples, chunk_size))
             if not _chunk_is_complete(p, *r)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} chunk files are missing or incomplete, e.g. "
                            f"{missing[0]}; is --out on a filesystem all hosts share?")
  path = assemble(out, paths, num_samples)
  if grid:
    png, classes = write_grid(paths, chunk_ranges(num_samples, chunk_size), num_samples,
                              model.num_classes, os.path.join(out, "grid.png"))
    shown = (f"classes {classes[0]}..{classes[-1]}" if len(classes) == model.num_classes
             else f"{len(classes)} of the {model.num_classes} classes")
    print(f"[sample] {png}: a row per class ({shown}, its number at the left), the first "
          "samples of each", file=sys.stderr, flush=True)
  _remove_chunks(paths)
  print(f"[sample] wrote {path}", file=sys.stderr, flush=True)
  return path






# ----------------------------------------------------------------------------- dry run


def dry_run_report(config, checkpoint_path: str, out: str, *, num_samples: int,
                   batch_size: int = 64, chunk_size: int = 1000, seed: int = 0,
                   online: bool = False, step: int | None = None,
                   **sampling_overrides) -> dict:
  """--dry_run: loads the checkpoint, checks --out, traces the sampler on one batch.

  Prints the plan and writes nothing; returns the plan as a dict.
  """
  started = time.perf_counter()
  settings = samplers.settings_from_config(config.sampling, **sampling_overrides)
  mesh = trained_params.sampling_mesh(config)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step, mesh=mesh)
  dry_run.line("checkpoint", f"{source}: {count_params(params):,} params")
  ranges = chunk_ranges(num_samples, chunk_size)
  devices = jax.local_devices()
  per_call = math.ceil(batch_size / len(devices)) * len(devices)
  res = config.data.resolution
  if res % model.patch_size:
    raise dry_run.DryRunError(f"config.data.resolution = {res} is not a multiple of the "
                              f"model's patch size {model.patch_size}")
  conflict = manifest_conflict(out, manifest(model, settings, resolution=res,
                                             num_samples=num_samples, seed=seed,
                                             manifest_extra=dict(checkpoint=source)))
  if conflict:
    raise dry_run.DryRunError(conflict)
  done = sum(_chunk_is_complete(os.path.join(out, CHUNK_PATTERN.format(c)), *r)
             for c, r in enumerate(ranges))
  dry_run.line("plan", f"{num_samples:,} samples at {res}x{res}, {model.num_classes} classes, "
               f"{len(ranges)} chunk file(s) of up to {chunk_size} ({done} already in {out}); "
               f"{per_call} per model call over {len(devices)} local device(s), "
               f"{jax.process_count()} process(es)")
  dry_run.line("sampler", ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))

  sample_fn = make_sample_fn(model, settings, (res, res, model.in_channels), mesh)
  replicated, batch = NamedSharding(mesh, P()), trained_params.batch_sharding(mesh)
  indices = jax.ShapeDtypeStruct((per_call,), np.int32, sharding=batch)
  traced = sample_fn.trace(dry_run.abstract(params, trained_params.param_shardings(model, mesh)),
                           jax.ShapeDtypeStruct((), np.int32, sharding=replicated),
                           indices, indices)
  out_shape = tuple(traced.out_info.shape)
  dry_run.line("sample fn", f"the whole sampler traced on abstract inputs: one call gives "
               f"{out_shape} {traced.out_info.dtype}")
  dry_run.line("dry run", f"OK in {time.perf_counter() - started:.1f} s: nothing was sampled "
               "or written. Run the same command without --dry_run to sample.")
  return dict(chunks=len(ranges), done=done, per_call=per_call, out_shape=out_shape,
              settings=settings)






