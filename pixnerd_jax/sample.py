"""FID-50K sample generation: python -m pixnerd_jax.sample --config=... --checkpoint=DIR
--num_samples=50000 --out=DIR.

--checkpoint is a training workdir (EMA params of its latest checkpoint; --online for the
online ones) or a params checkpoint (`convert checkpoint` output; its model.json gives
the architecture). Sampler settings come from config.sampling, overridden by flags.

Sample i has class (i * num_classes) // N (N / num_classes per class, as the reference's
`idx // 50` for 50k) and starting noise normal(fold_in(key(seed), i)), so the result does
not depend on the batch size, the chunk size or the device count. Work is split into
chunks written as out/samples_XXXXX.npz (uint8 images, labels, indices); a restart skips
complete chunks. Each JAX process takes every process_count-th chunk, its batches split
over its local devices. Finally process 0 streams the chunks into
out/samples_NxHxWxC.npz (`arr_0` uint8 NHWC as the ADM evaluation suite reads it, `arr_1`
labels) and writes a PNG grid.

Text-to-image checkpoints (model.conditioning="text") sample prompts instead
(pixnerd_jax/sample_t2i.py): --prompt / --prompts FILE, --geneval FILE or --dpg DIR, at
any --height x --width.
"""

import functools
import json
import math
import os
import sys
import time
import zipfile

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from pixnerd_jax import checkpoint
from pixnerd_jax import cli
from pixnerd_jax import console
from pixnerd_jax import dry_run
from pixnerd_jax import sample_t2i
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.evaluation import images as images_lib
from pixnerd_jax.models import build_model, count_params, param_shapes, params_for_model

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/imagenet256.py.",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Training workdir or params checkpoint directory.")
flags.DEFINE_string("out", None, "Output directory for chunks, the .npz and the grid.")
flags.DEFINE_integer("num_samples", 50000, "Number of samples (classes balanced).")
flags.DEFINE_integer("batch_size", 64, "Samples per model batch on this host (split over "
                     "its local devices; rounded up to a multiple of their count).")
flags.DEFINE_integer("chunk_size", 1000, "Samples per chunk file (the unit of resuming).")
flags.DEFINE_integer("seed", 0, "Noise seed: sample i starts from fold_in(key(seed), i).")
flags.DEFINE_bool("online", False, "Training workdir: sample the online params, not EMA.")
flags.DEFINE_integer("step", None, "Training workdir: checkpoint step (default: latest).")
flags.DEFINE_bool("grid", True, "Also write grid.png (a few classes, one per row).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first "
                  "(multi-host; settings from the cluster environment).")
# Overrides of config.sampling (unset: the config's value; sampler defaults to euler).
flags.DEFINE_enum("sampler", None, list(samplers.SAMPLERS), "Sampler.")
flags.DEFINE_integer("num_steps", None, "Sampling steps.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (1 = none).")
flags.DEFINE_float("guidance_interval_min", None, "Guidance only for t > this.")
flags.DEFINE_float("guidance_interval_max", None, "Guidance only for t < this.")
flags.DEFINE_float("timeshift", None, "Time-grid shift (1 = uniform).")
flags.DEFINE_float("last_step", None, "Size of the last step (default 1 / num_steps).")
flags.DEFINE_integer("order", None, "AdamLM order (1-4).")
flags.DEFINE_bool("exact_heun", None, "Heun without reusing the corrector velocity.")
flags.DEFINE_enum("step_fn", None, list(samplers.STEP_FNS), "Euler step (ODE or SDE).")
# Text-to-image checkpoints (sample_t2i.py): one prompt source, any size.
flags.DEFINE_multi_string("prompt", None, "Text-to-image: a prompt (repeatable).")
flags.DEFINE_string("prompts", None, "Text-to-image: a file of prompts, one a line.")
flags.DEFINE_string("geneval", None, "Text-to-image: GenEval's evaluation_metadata.jsonl; "
                    "writes <out>/<i:05d>/{metadata.jsonl,samples/<k:04d>.png}.")
flags.DEFINE_string("dpg", None, "Text-to-image: a folder of DPG-Bench prompt files "
                    "<name>.txt; writes <out>/<name>.png, 2x2 grids of 4 samples.")
flags.DEFINE_integer("samples_per_prompt", 4, "Text-to-image: images per prompt.")
flags.DEFINE_integer("height", None, "Text-to-image: image height (default: the config's "
                     "data.resolution); a multiple of resolution / patch_size.")
flags.DEFINE_integer("width", None, "Text-to-image: image width (as --height).")
flags.DEFINE_integer("field_chunk_pixels", sample_t2i.DEFAULT_FIELD_CHUNK_PIXELS,
                     "Text-to-image: the neural field decodes at most this many pixels at "
                     "a time (bounds memory at large sizes; 0 = all at once).")
flags.DEFINE_bool("dry_run", False, "Load the checkpoint, check --out and trace the sampler "
                  "on abstract inputs; print the plan and exit without sampling.")
flags.mark_flags_as_required(["config", "checkpoint", "out"])
_PROMPT_SOURCES = ("prompt", "prompts", "geneval", "dpg")

# How to run the model rather than what it is: taken from the run config, not model.json.
_RUNTIME_MODEL_FIELDS = ("dtype", "attention_implementation", "remat_policy", "scan_blocks")
CHUNK_PATTERN = "samples_{:05d}.npz"
MANIFEST = "run.json"


# ----------------------------------------------------------------------------- loading


def load_checkpoint(path: str, config, online: bool = False, step: int | None = None):
  """(model, params, description) from a training workdir or a params checkpoint.

  Args:
    path: a workdir (has checkpoints/) or a params checkpoint (has model.json).
    config: the run config; config.model names the architecture of a workdir.
    online: workdir only: the online params instead of the EMA ones.
    step: workdir only: which checkpoint (default latest).
  """
  if os.path.exists(os.path.join(path, checkpoint.MODEL_JSON)):
    if online or step is not None:
      raise checkpoint.CheckpointError(
          f"{path} is a params checkpoint: --online and --step apply to training workdirs.")
    model_config, params = checkpoint.load_params(path)
    model_config = dict(model_config)
    for key in _RUNTIME_MODEL_FIELDS:
      if key in config.model:
        model_config[key] = config.model[key]
    source = f"params checkpoint {os.path.abspath(path)}"
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    model_config = dict(config.model)
    step, state = checkpoint.load_train_state(path, step)
    params = state["params" if online else "ema_params"]
    source = f"{'online' if online else 'EMA'} params of step {step} in {os.path.abspath(path)}"
  else:
    raise checkpoint.CheckpointError(
        f"{path} is neither a training workdir (no checkpoints/) nor a params checkpoint "
        f"(no {checkpoint.MODEL_JSON}).")
  model = build_model(model_config)
  params = checkpoint.match_params(params_for_model(params, model), param_shapes(model),
                                   source)
  return model, params, source


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
  if not os.path.exists(path):
    return False
  try:
    with np.load(path) as data:  # reads only the small `indices` member
      return np.array_equal(data["indices"], np.arange(start, end))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile):
    return False


def _write_atomic_npz(path: str, **arrays) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


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
  path = os.path.join(out, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    old = json.load(f)
  diff = {k: (old.get(k), v) for k, v in manifest_now.items() if old.get(k) != v}
  if diff:
    return (f"{out} holds samples made with other settings ({diff}, as (before, now)). "
            "Use a new --out, or the settings of that run.")
  return None


def _check_manifest(out: str, manifest: dict) -> None:
  """Refuses to mix chunks made with different settings in one output directory."""
  path = os.path.join(out, MANIFEST)
  if os.path.exists(path):
    conflict = manifest_conflict(out, manifest)
    if conflict:
      raise ValueError(conflict)
  elif jax.process_index() == 0:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- sampling


def make_sample_fn(model, settings: dict, image_shape: tuple[int, int, int], mesh: Mesh):
  """A jitted (params, seed, indices (B,), labels (B,)) -> float32 (B, H, W, C) samples.

  Noise and SDE keys come from each sample's index, so a sample does not depend on its
  batch. B must be a multiple of the mesh size; the batch is split over the mesh.
  Cached: the same model, settings, shape and mesh reuse one compiled function.
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
    velocity = lambda x, t, y: model.apply({"params": params}, x, t, y)
    return samplers.sample(velocity, noise, labels, key=sde_keys,
                           null_class=model.num_classes, **settings)

  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
  return jax.jit(fn, in_shardings=(replicated, replicated, batch, batch),
                 out_shardings=batch)


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def generate(out: str, model, params, settings: dict, *, resolution: int, num_samples: int,
             batch_size: int = 64, chunk_size: int = 1000, seed: int = 0,
             manifest_extra: dict | None = None) -> list[str]:
  """Writes this process's missing chunk files; returns all chunk paths.

  Args:
    out: output directory (shared by all processes).
    settings: keyword arguments of `samplers.sample` (see `settings_from_config`).
    resolution: square image side.
    batch_size: samples per model call on this host (rounded up to the device count).
  """
  os.makedirs(out, exist_ok=True)
  image_shape = (resolution, resolution, model.in_channels)
  _check_manifest(out, manifest(model, settings, resolution=resolution,
                                num_samples=num_samples, seed=seed,
                                manifest_extra=manifest_extra))

  devices = jax.local_devices()
  mesh = Mesh(np.array(devices), ("batch",))
  batch_size = math.ceil(batch_size / len(devices)) * len(devices)
  sample_fn = make_sample_fn(model, settings, image_shape, mesh)
  params = jax.device_put(params, NamedSharding(mesh, P()))

  ranges = chunk_ranges(num_samples, chunk_size)
  paths = [os.path.join(out, CHUNK_PATTERN.format(c)) for c in range(len(ranges))]
  mine = [c for c in range(len(ranges)) if c % jax.process_count() == jax.process_index()]
  todo = [c for c in mine if not _chunk_is_complete(paths[c], *ranges[c])]
  logging.info("%d chunks of %d samples; this process (%d/%d) owns %d, %d already done.",
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
    logging.info("chunk %d (%d/%d here): %d/%d samples, %.2f img/s, ETA %s", c, n + 1,
                 len(todo), done, total, rate, _format_seconds((total - done) / rate))
    print(f"[sample] chunk {c}: {done}/{total} samples, {rate:.2f} img/s, "
          f"ETA {_format_seconds((total - done) / rate)}", file=sys.stderr, flush=True)
  return paths


def assemble(out: str, chunk_paths: list[str], num_samples: int) -> str:
  """Streams the chunks into one ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels).

  Only one chunk is in memory at a time (50k samples at 256 px are 9.8 GB).
  Returns:
    The path, out/samples_{N}x{H}x{W}x{C}.npz.
  """
  with np.load(chunk_paths[0]) as first:
    sample_shape = first["images"].shape[1:]
  shape = (num_samples,) + tuple(sample_shape)
  path = os.path.join(out, "samples_{}.npz".format("x".join(map(str, shape))))
  labels = []
  tmp = f"{path}.tmp"
  with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
    with zf.open("arr_0.npy", "w", force_zip64=True) as f:
      np.lib.format.write_array_header_1_0(
          f, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape})
      written = 0
      for chunk in chunk_paths:
        with np.load(chunk) as data:
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
  os.replace(tmp, path)
  return path


def write_grid(chunk_paths: list[str], ranges: list[tuple[int, int]], num_samples: int,
               num_classes: int, out_png: str, rows: int = 8, cols: int = 8) -> str:
  """A grid (one class per row, `rows` classes spread over the range) read from the chunks."""
  per_class = num_samples // num_classes
  cols = max(1, min(cols, per_class))
  classes = np.unique(np.linspace(0, num_classes - 1, min(rows, num_classes)).astype(int))
  # Labels rise with the index: class c starts at ceil(c N / K).
  wanted = [-(-c * num_samples // num_classes) + j for c in classes for j in range(cols)]
  tiles = {}
  for path, (start, end) in zip(chunk_paths, ranges):
    inside = [i for i in wanted if start <= i < end]
    if inside:
      with np.load(path) as data:
        images = data["images"]
        tiles.update({i: images[i - start] for i in inside})
  grid = images_lib.make_grid(np.stack([tiles[i] for i in wanted]), len(classes))
  images_lib.save_png(grid, out_png)
  return out_png


def run(config, checkpoint_path: str, out: str, *, num_samples: int, batch_size: int = 64,
        chunk_size: int = 1000, seed: int = 0, online: bool = False, step: int | None = None,
        grid: bool = True, **sampling_overrides) -> str | None:
  """The whole command; returns the .npz path (process 0) or None (other processes)."""
  settings = samplers.settings_from_config(config.sampling, **sampling_overrides)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step)
  logging.info("Sampling %d images at %d px from %s with %s", num_samples,
               config.data.resolution, source, settings)
  paths = generate(out, model, params, settings, resolution=config.data.resolution,
                   num_samples=num_samples, batch_size=batch_size, chunk_size=chunk_size,
                   seed=seed, manifest_extra=dict(checkpoint=source))
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
  logging.info("Wrote %s", path)
  if grid:
    png = write_grid(paths, chunk_ranges(num_samples, chunk_size), num_samples,
                     model.num_classes, os.path.join(out, "grid.png"))
    logging.info("Wrote %s", png)
  return path


def _text_request(out: str, *, prompts=None, prompts_file=None, geneval=None, dpg=None,
                  samples_per_prompt: int = 4, grid: bool = True):
  """(prompts, make_layout, layout name) of exactly one prompt source."""
  given = [name for name, value in (("--prompt", prompts), ("--prompts", prompts_file),
                                    ("--geneval", geneval), ("--dpg", dpg)) if value]
  if len(given) != 1:
    raise ValueError(f"A text-to-image checkpoint samples prompts: pass exactly one of "
                     f"--prompt, --prompts, --geneval or --dpg (got {given or 'none'}).")
  if samples_per_prompt < 1:
    raise ValueError(f"--samples_per_prompt={samples_per_prompt}: must be >= 1.")
  if dpg:
    from pixnerd_jax.evaluation import dpg as dpg_lib  # pylint: disable=g-import-not-at-top
    names, prompts = dpg_lib.read_prompts(dpg)
    return prompts, lambda manifest: dpg_lib.layout(out, names, prompts, manifest), "dpg"
  if geneval:
    from pixnerd_jax.evaluation import geneval as geneval_lib  # pylint: disable=g-import-not-at-top
    metadata = geneval_lib.read_metadata(geneval)
    return ([m["prompt"] for m in metadata],
            lambda manifest: geneval_lib.layout(out, metadata, samples_per_prompt), "geneval")
  prompts = list(prompts) if prompts else sample_t2i.read_prompt_file(prompts_file)
  return (prompts, lambda manifest: sample_t2i.prompt_layout(out, prompts, samples_per_prompt,
                                                             grid=grid), "prompts")


def run_text(config, checkpoint_path: str, out: str, *, prompts=None, prompts_file=None,
             geneval=None, dpg=None, samples_per_prompt: int = 4, online: bool = False,
             step: int | None = None, grid: bool = True, **kwargs) -> str:
  """The text-to-image command: exactly one of prompts (a list), prompts_file, geneval
  (an evaluation_metadata.jsonl) or dpg (a prompt folder). Returns `out`.

  kwargs: height, width, batch_size, seed, field_chunk_pixels and sampler overrides of
  `sample_t2i.run`.
  """
  prompts, make_layout, layout_name = _text_request(
      out, prompts=prompts, prompts_file=prompts_file, geneval=geneval, dpg=dpg,
      samples_per_prompt=samples_per_prompt, grid=grid)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step)
  return sample_t2i.run(config, model, params, source, checkpoint_path, out, make_layout,
                        layout_name=layout_name, prompts=prompts,
                        samples_per_prompt=samples_per_prompt, **kwargs)


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
  model, params, source = load_checkpoint(checkpoint_path, config, online, step)
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

  mesh = Mesh(np.array(devices), ("batch",))
  sample_fn = make_sample_fn(model, settings, (res, res, model.in_channels), mesh)
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
  indices = jax.ShapeDtypeStruct((per_call,), np.int32, sharding=batch)
  traced = sample_fn.trace(dry_run.abstract(params, replicated),
                           jax.ShapeDtypeStruct((), np.int32, sharding=replicated),
                           indices, indices)
  out_shape = tuple(traced.out_info.shape)
  dry_run.line("sample fn", f"the whole sampler traced on abstract inputs: one call gives "
               f"{out_shape} {traced.out_info.dtype}")
  dry_run.line("dry run", f"OK in {time.perf_counter() - started:.1f} s: nothing was sampled "
               "or written. Run the same command without --dry_run to sample.")
  return dict(chunks=len(ranges), done=done, per_call=per_call, out_shape=out_shape,
              settings=settings)


def dry_run_text_report(config, checkpoint_path: str, out: str, *, prompts=None,
                        prompts_file=None, geneval=None, dpg=None, samples_per_prompt: int = 4,
                        online: bool = False, step: int | None = None, grid: bool = True,
                        height: int | None = None, width: int | None = None,
                        batch_size: int = 8, seed: int = 0,
                        field_chunk_pixels: int = sample_t2i.DEFAULT_FIELD_CHUNK_PIXELS,
                        **sampling_overrides) -> dict:
  """--dry_run of a text-to-image checkpoint: reads the prompts, the checkpoint and the
  text encoder, checks --out and traces the sampler on one abstract batch."""
  started = time.perf_counter()
  prompts, make_layout, layout_name = _text_request(
      out, prompts=prompts, prompts_file=prompts_file, geneval=geneval, dpg=dpg,
      samples_per_prompt=samples_per_prompt, grid=grid)
  settings = sample_t2i.sampling_settings(config.sampling, **sampling_overrides)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step)
  dry_run.line("checkpoint", f"{source}: {count_params(params):,} params")
  res = int(config.data.resolution)
  height, width = height or res, width or res
  model = sample_t2i.model_for_size(model, res, height, width, field_chunk_pixels)
  encoder, text_params = sample_t2i.load_text_encoder(config, model, checkpoint_path)
  dry_run.line("text encoder", f"{count_params(text_params):,} params")
  manifest = sample_t2i.manifest_for(settings, height=height, width=width, seed=seed,
                                     samples_per_prompt=samples_per_prompt, prompts=prompts,
                                     source=source, layout=layout_name)
  layout = make_layout(manifest)
  try:
    sample_t2i.check_manifest(layout.read_manifest(), manifest, out)
  except ValueError as e:
    raise dry_run.DryRunError(str(e)) from e
  done = sum(layout.is_done(i) for i in range(len(prompts)))
  devices = jax.local_devices()
  work = max(1, (len(prompts) - done) * samples_per_prompt)
  per_call = math.ceil(min(batch_size, work) / len(devices)) * len(devices)
  dry_run.line("plan", f"{len(prompts)} prompt(s) x {samples_per_prompt} at {height}x{width} "
               f"({layout_name} layout, {done} already in {out}); {per_call} per model call "
               f"over {len(devices)} local device(s), {jax.process_count()} process(es)")
  dry_run.line("sampler", ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
  mesh = Mesh(np.array(devices), ("batch",))
  sample_fn = sample_t2i.make_sample_fn(model, settings, (height, width, model.in_channels),
                                        mesh)
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
  null = np.asarray(encoder.unconditional(text_params))  # computed once, cached
  text = jax.ShapeDtypeStruct((per_call,) + tuple(null.shape[1:]), null.dtype, sharding=batch)
  traced = sample_fn.trace(dry_run.abstract(params, replicated),
                           jax.ShapeDtypeStruct((), np.int32, sharding=replicated),
                           jax.ShapeDtypeStruct((per_call,), np.int32, sharding=batch), text,
                           jax.ShapeDtypeStruct(null.shape, null.dtype, sharding=replicated))
  out_shape = tuple(traced.out_info.shape)
  dry_run.line("sample fn", f"the whole sampler traced on abstract inputs: one call gives "
               f"{out_shape} {traced.out_info.dtype}")
  dry_run.line("dry run", f"OK in {time.perf_counter() - started:.1f} s: nothing was sampled "
               "or written. Run the same command without --dry_run to sample.")
  return dict(prompts=len(prompts), done=done, per_call=per_call, out_shape=out_shape,
              settings=settings)


@console.entry_point(known=(checkpoint.CheckpointError, ValueError, OSError),
                 oom_hint="lower --batch_size")
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_start()
  if FLAGS.distributed:
    jax.distributed.initialize()
  overrides = {name: FLAGS[name].value for name in (
      "sampler", "num_steps", "guidance", "guidance_interval_min", "guidance_interval_max",
      "timeshift", "last_step", "order", "exact_heun", "step_fn")}
  text_model = sample_t2i.is_text_checkpoint(FLAGS.checkpoint, FLAGS.config)
  if FLAGS.dry_run and text_model:
    return dry_run.report_errors(
        dry_run_text_report, FLAGS.config, FLAGS.checkpoint, FLAGS.out,
        prompts=FLAGS.prompt, prompts_file=FLAGS.prompts, geneval=FLAGS.geneval,
        dpg=FLAGS.dpg, samples_per_prompt=FLAGS.samples_per_prompt, online=FLAGS.online,
        step=FLAGS.step, grid=FLAGS.grid, height=FLAGS.height, width=FLAGS.width,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        field_chunk_pixels=FLAGS.field_chunk_pixels, **overrides)
  if FLAGS.dry_run:
    return dry_run.report_errors(
        dry_run_report, FLAGS.config, FLAGS.checkpoint, FLAGS.out,
        num_samples=FLAGS.num_samples, batch_size=FLAGS.batch_size,
        chunk_size=FLAGS.chunk_size, seed=FLAGS.seed, online=FLAGS.online, step=FLAGS.step,
        **overrides)
  if text_model:
    path = run_text(
        FLAGS.config, FLAGS.checkpoint, FLAGS.out, prompts=FLAGS.prompt,
        prompts_file=FLAGS.prompts, geneval=FLAGS.geneval, dpg=FLAGS.dpg,
        samples_per_prompt=FLAGS.samples_per_prompt, online=FLAGS.online, step=FLAGS.step,
        grid=FLAGS.grid, height=FLAGS.height, width=FLAGS.width,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        field_chunk_pixels=FLAGS.field_chunk_pixels, **overrides)
  else:
    text_flags = [f"--{n}" for n in _PROMPT_SOURCES + ("height", "width") if FLAGS[n].value]
    if text_flags:
      raise ValueError(f"{' '.join(text_flags)} need a text-to-image checkpoint; "
                       f"{FLAGS.checkpoint} holds a class-conditional model.")
    path = run(FLAGS.config, FLAGS.checkpoint, FLAGS.out, num_samples=FLAGS.num_samples,
               batch_size=FLAGS.batch_size, chunk_size=FLAGS.chunk_size, seed=FLAGS.seed,
               online=FLAGS.online, step=FLAGS.step, grid=FLAGS.grid, **overrides)
  if path:
    print(path)


if __name__ == "__main__":
  jax.config.config_with_absl()
  cli.run(main)
