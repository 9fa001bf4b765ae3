"""Text-to-image sampling: prompts to PNGs at any size, GenEval and DPG-Bench layouts.

The command is `python -m pixnerd_jax.sample` (it dispatches here on the checkpoint's
model.conditioning); this module holds the pieces, with no flags of its own:

  settings     `sampling_settings`: the config's sampler block, or the reference's t2i
               inference settings (AdamLM-2, 25 steps, CFG 4 on (0, 1), timeshift 3).
  size         `model_for_size`: any height x width whose sides are multiples of the
               trunk's tokens per side; other sizes use the heavy decoder (spec 7.4): the
               trunk sees a nearest copy at the trained resolution, the neural field
               decodes larger or non-square patches, in chunks of at most
               `field_chunk_pixels` pixels so that memory stays bounded.
  noise        sample k of prompt i starts from normal(fold_in(key(seed), index)) with
               index = i * samples_per_prompt + k (prompt files), or k alone (GenEval and
               DPG-Bench: every prompt gets the same noises, as the reference's seeds
               0..3), so an image depends neither on its batch nor on the device count.
  layouts      `Layout`: the prompts, where each prompt's images go, and whether a prompt
               is finished (a restart skips those). Prompt files: `prompt_layout`;
               GenEval and DPG-Bench: sampling/geneval.py and sampling/dpg.py.
  `generate`   batches the unfinished prompts' samples over the local devices; each JAX
               process takes every process_count-th prompt.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Callable, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from pixnerd_jax.diffusion import samplers
from pixnerd_jax.evaluation import images as images_lib
from pixnerd_jax.models import count_params
from pixnerd_jax.models import text_encoder as text_encoder_lib
from pixnerd_jax.models.pixnerd import heavy_decoder_geometry
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.sampling import trained_params
from pixnerd_jax.sampling.trained_params import load_checkpoint
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import dry_run

# The reference's SFT inference / app.py / GenEval / DPG-Bench sampler (spec 5.3, 5.4).
T2I_SAMPLING = dict(sampler="adamlm", order=2, num_steps=25, guidance=4.0,
                    guidance_interval_min=0.0, guidance_interval_max=1.0, timeshift=3.0,
                    last_step=None)
# The neural field runs over at most this many pixels at a time (0: all at once): two
# 1024 x 1024 images. A guided float32 XXL/16 call on 4 images then needs 2.4 GiB of XLA
# temporaries at 1024 x 1024 and 2.8 GiB at 2048 x 2048, against 9.1 and 33 GiB
# unchunked (benchmarks/sampling_t2i.py --memory).
DEFAULT_FIELD_CHUNK_PIXELS = 1 << 21
MANIFEST = "run.json"
_SAMPLER_FIELDS = ("sampler", "order", "num_steps", "guidance", "guidance_interval_min",
                   "guidance_interval_max", "timeshift", "last_step", "exact_heun", "step_fn")


# ----------------------------------------------------------------------------- checkpoint


def is_text_checkpoint(path: str, config) -> bool:
  """Whether a checkpoint holds a text-to-image model: its model.json says so (params
  checkpoints), else config.model does (training workdirs)."""
  model_json = epath.Path(path) / checkpoint.MODEL_JSON  # local or gs://
  if model_json.is_file():
    return json.loads(model_json.read_text()).get("conditioning", "class") == "text"
  return config.model.get("conditioning", "class") == "text"


def load_text_encoder(config, model, checkpoint_path: str):
  """(encoder, params): config.text_encoder.path, or the stand-in a training run saved in
  <checkpoint>/text_encoder; its output width padded/truncated to model.txt_embed_dim."""
  te = config.text_encoder
  if int(te.get("max_length", 128)) != model.txt_max_length:
    raise ValueError(f"config.text_encoder.max_length={te.get('max_length', 128)} but the "
                     f"model reads {model.txt_max_length} text tokens (txt_max_length); set "
                     f"--config.text_encoder.max_length={model.txt_max_length}.")
  return text_encoder_lib.load_for_run(te, model.txt_embed_dim, workdir=checkpoint_path)


# ----------------------------------------------------------------------------- settings


def _default_sampling() -> dict:
  from configs import default  # pylint: disable=import-outside-toplevel
  return dict(default.get_config().sampling)


def sampling_settings(sampling_config, **overrides) -> dict:
  """Keyword arguments of `samplers.sample` for a text-to-image run.

  A config that sets any sampler field of its `sampling` block (configs/t2i_sft512.py,
  digits_t2i.py, ...) is taken as written, as for class models; a block left at
  configs/default.py's values means the reference's t2i inference settings
  (T2I_SAMPLING). Flags (`overrides`, None = unset) override either.
  """
  block = dict(sampling_config)
  defaults = _default_sampling()
  untouched = all(block.get(k) == defaults.get(k) for k in _SAMPLER_FIELDS)
  base = dict(T2I_SAMPLING) if untouched else block
  return samplers.settings_from_config(base, **overrides)


# ----------------------------------------------------------------------------- size


def _near_multiples(value: int, step: int) -> str:
  low, high = value // step * step, max(step, -(-value // step) * step)
  return " or ".join(str(v) for v in sorted({low, high}) if v > 0)


def model_for_size(model, resolution: int, height: int, width: int,
                   field_chunk_pixels: int = DEFAULT_FIELD_CHUNK_PIXELS):
  """The model that renders height x width images, trained at resolution x resolution.

  The trunk always sees (resolution / patch)^2 tokens; at another size the heavy decoder
  (spec 7.4, decoder_patch_scaling = (H / R, W / R)) decodes (H / n) x (W / n)-pixel
  patches, n the tokens per side, so H and W must be multiples of n (32 for the 512 px
  XXL/16, as the reference's app rounds them). The field then runs in chunks of at most
  `field_chunk_pixels` pixels (0: unchunked).
  Raises:
    ValueError naming the sizes that work.
  """
  p = model.patch_size
  if resolution % p:
    raise ValueError(f"config.data.resolution={resolution} is not a multiple of the patch "
                     f"size {p}; set it to the resolution the model was trained at.")
  n = resolution // p
  if height < 1 or width < 1 or height % n or width % n:
    raise ValueError(
        f"Cannot make {height}x{width} images with this model (trained at {resolution}x"
        f"{resolution}, patch {p}): the trunk sees {n}x{n} tokens and the neural field "
        f"decodes (height/{n})x(width/{n})-pixel patches, so height and width must be "
        f"multiples of {n}: try height {_near_multiples(height, n)}, width "
        f"{_near_multiples(width, n)}.")
  scaling = None
  if (height, width) != (resolution, resolution):
    if model.conditioning != "text":
      raise ValueError(f"Only text-to-image models render other sizes than the trained "
                       f"{resolution}x{resolution} (the heavy decoder, spec 7.4).")
    scaling = (height / resolution, width / resolution)
    heavy_decoder_geometry(height, width, p, scaling)  # the model's own check
  chunk = None
  if field_chunk_pixels:
    chunk = max(1, field_chunk_pixels // ((height // n) * (width // n)))
  return model.clone(decoder_patch_scaling=scaling, decoder_chunk_size=chunk)


# ----------------------------------------------------------------------------- sampling


def noise_for(seed: int, indices, image_shape) -> jax.Array:
  """(B, H, W, C) starting noise: sample b is normal(fold_in(key(seed), indices[b]))."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), tuple(image_shape),
                                              jnp.float32))(jnp.asarray(indices))


def make_sample_fn(model, settings: dict, image_shape: tuple[int, int, int], mesh: Mesh):
  """A jitted (params, seed, indices (B,), text (B, T, E), null (1, T, E)) -> (B, H, W, C).

  Sample b starts from `noise_for(seed, indices)[b]`; its SDE noise (Euler SDE steps)
  comes from fold_in(that key, 1). B must be a multiple of the mesh size. Cached per
  model, settings, shape and mesh.
  """
  return _cached_sample_fn(model, tuple(sorted(settings.items())), tuple(image_shape), mesh)


@functools.lru_cache(maxsize=8)
def _cached_sample_fn(model, settings: tuple, image_shape: tuple, mesh: Mesh):
  settings = dict(settings)

  def fn(params, seed, indices, text, null):
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
    noise = jax.vmap(lambda k: jax.random.normal(k, image_shape, jnp.float32))(keys)
    sde_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    velocity = lambda x, t, y, h=None: model.apply({"params": params}, x, t, y, h)
    return samplers.sample(velocity, noise, text, key=sde_keys, null_class=null, **settings)

  replicated, batch = NamedSharding(mesh, P()), trained_params.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(trained_params.param_shardings(model, mesh), replicated,
                                   batch, batch, replicated),
                 out_shardings=batch)


@dataclasses.dataclass
class Layout:
  """Where a run's images go.

  Attributes:
    prompts: the prompts, in order.
    samples_per_prompt: images per prompt.
    noise_index: (prompt index, sample k) -> the noise index of that image.
    is_done: prompt index -> whether its outputs are complete (a restart skips it).
    write: (prompt index, (samples_per_prompt, H, W, C) uint8) -> None; called once per
      prompt, by the process that made it.
    read_manifest: () -> the settings a previous run recorded here, or None.
    write_manifest: (manifest) -> None; called on process 0 before sampling.
    finish: called on process 0 after every process has written (grids, indexes), or None.
  """
  prompts: Sequence[str]
  samples_per_prompt: int
  noise_index: Callable[[int, int], int]
  is_done: Callable[[int], bool]
  write: Callable[[int, np.ndarray], None]
  read_manifest: Callable[[], dict | None]
  write_manifest: Callable[[dict], None]
  finish: Callable[[], None] | None = None


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def generate(layout: Layout, model, params, encoder, text_params, settings: dict, *,
             height: int, width: int, batch_size: int = 8, seed: int = 0,
             mesh: Mesh | None = None) -> int:
  """Makes this process's unfinished prompts; returns how many images it made.

  Prompt i belongs to process i % process_count. Its samples are batched with other
  prompts' (batch_size per host, rounded up to the local device count; the last batch is
  padded with its last sample), and written as soon as all of them are made.
  Args:
    model: from `model_for_size` (its size must be height x width).
    encoder, text_params: the text encoder (`load_text_encoder`).
    mesh: the sampling mesh (`trained_params.sampling_mesh`); default data parallel over
      this process's devices.
  """
  n = layout.samples_per_prompt
  mine = [i for i in range(len(layout.prompts))
          if i % jax.process_count() == jax.process_index()]
  todo = [i for i in mine if not layout.is_done(i)]
  logging.debug("%d prompts x %d images at %dx%d; this process (%d/%d) owns %d, %d already "
               "done.", len(layout.prompts), n, height, width, jax.process_index(),
               jax.process_count(), len(mine), len(mine) - len(todo))
  work = [(i, k) for i in todo for k in range(n)]
  if not work:
    return 0

  mesh = mesh or mesh_lib.create_mesh(None, jax.local_devices())
  devices = mesh.devices.size
  # No bigger than the work (a few prompts need no batch of 64), a multiple of the devices.
  batch_size = math.ceil(min(batch_size, len(work)) / devices) * devices
  sample_fn = make_sample_fn(model, settings, (height, width, model.in_channels), mesh)
  params = jax.device_put(params, trained_params.param_shardings(model, mesh))
  null = np.asarray(encoder.unconditional(text_params))
  pending = {}  # prompt index -> {k: image}
  started, made = time.perf_counter(), 0
  for b in range(0, len(work), batch_size):
    part = work[b:b + batch_size]
    padded = part + [part[-1]] * (batch_size - len(part))
    indices = np.array([layout.noise_index(i, k) for i, k in padded], np.int32)
    text = encoder.encode_texts(text_params, [layout.prompts[i] for i, _ in padded])
    x = images_lib.to_uint8(np.asarray(sample_fn(params, np.int32(seed), indices, text, null)))
    for (i, k), image in zip(part, x):
      pending.setdefault(i, {})[k] = image
      if len(pending[i]) == n:
        done = pending.pop(i)
        layout.write(i, np.stack([done[j] for j in range(n)]))
    made += len(part)
    rate = made / (time.perf_counter() - started)
    eta = _format_seconds((len(work) - made) / rate)
    print(f"[sample] {made}/{len(work)} images, {rate:.3f} img/s, ETA {eta}",
          file=sys.stderr, flush=True)
  return made


# ----------------------------------------------------------------------------- manifests


def prompts_digest(prompts: Sequence[str]) -> str:
  return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]


def manifest_for(settings: dict, *, height: int, width: int, seed: int,
                 samples_per_prompt: int, prompts: Sequence[str], source: str,
                 layout: str) -> dict:
  """What must match for a restart to add to an output directory (JSON-able)."""
  return dict(layout=layout, height=height, width=width, seed=seed,
              samples_per_prompt=samples_per_prompt, num_prompts=len(prompts),
              prompts_sha256=prompts_digest(prompts), checkpoint=source,
              settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})


def check_manifest(old: dict | None, manifest: dict, out: str) -> None:
  """Refuses to mix outputs made with other settings in one directory."""
  if old is None:
    return
  diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
  if diff:
    raise ValueError(f"{out} holds images made with other settings ({diff}, as (before, "
                     "now)). Use a new --out, or the settings of that run.")


def read_json(path: str) -> dict | None:
  path = epath.Path(path)
  if not path.exists():
    return None
  return json.loads(path.read_text(encoding="utf-8"))


def json_manifest(out: str, name: str = MANIFEST):
  """(read, write) of a manifest kept as <out>/<name>."""
  path = os.path.join(out, name)
  return (lambda: read_json(path),
          lambda manifest: write_atomic(path, lambda tmp: _write_json(tmp, manifest)))


def _write_json(path: str, value) -> None:
  epath.Path(path).write_text(json.dumps(value, indent=2, sort_keys=True), encoding="utf-8")


def write_atomic(path: str, write: Callable[[str], None]) -> None:
  """write(tmp) then rename: readers never see a partial file. The temporary name starts
  with a dot, so scorers that list digit-named files skip it."""
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
  write(tmp)
  epath.Path(tmp).replace(path)  # local or gs:// (a copy and a delete there)


def save_png(path: str, image: np.ndarray, text: dict[str, str] | None = None) -> None:
  """An atomic PNG, with optional text chunks."""
  info = None
  if text:
    from PIL import PngImagePlugin  # pylint: disable=import-outside-toplevel
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
      info.add_text(key, value)
  def write(tmp):
    with epath.Path(tmp).open("wb") as f:
      Image.fromarray(image).save(f, format="PNG", pnginfo=info)

  write_atomic(path, write)


# ----------------------------------------------------------------------------- prompt files


def read_prompt_file(path: str) -> list[str]:
  """Prompts one a line; blank lines are skipped."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"Prompt file not found: {path}.")
  prompts = [line.strip() for line in epath.Path(path).read_text(encoding="utf-8").splitlines()]
  prompts = [p for p in prompts if p]
  if not prompts:
    raise ValueError(f"{path} holds no prompts (one a line).")
  return prompts


def image_path(out: str, prompt_index: int, k: int) -> str:
  """<out>/images/<prompt:05d>_<k:04d>.png"""
  return os.path.join(out, "images", f"{prompt_index:05d}_{k:04d}.png")


def prompt_layout(out: str, prompts: Sequence[str], samples_per_prompt: int, *,
                  grid: bool = True, grid_rows: int = 8, grid_cols: int = 8,
                  grid_tile: int = 256) -> Layout:
  """Prompt files and --prompt: <out>/images/<i:05d>_<k:04d>.png, <out>/prompts.txt (line
  i is prompt i), <out>/run.json (the settings) and <out>/grid.png (a row per prompt, the
  first grid_rows x grid_cols images, tiles shrunk to at most grid_tile pixels).
  Sample k of prompt i has noise index i * samples_per_prompt + k."""
  n = samples_per_prompt

  def write(i, images):
    epath.Path(out, "images").mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
      save_png(image_path(out, i, k), image)

  def finish():
    write_atomic(os.path.join(out, "prompts.txt"), lambda tmp: _write_lines(tmp, prompts))
    if grid:
      rows, cols = min(grid_rows, len(prompts)), min(grid_cols, n)
      tiles = [_tile(image_path(out, i, k), grid_tile) for i in range(rows) for k in range(cols)]
      images_lib.save_png(images_lib.make_grid(np.stack(tiles), rows),
                          os.path.join(out, "grid.png"))

  read_manifest, write_manifest = json_manifest(out)
  return Layout(prompts=list(prompts), samples_per_prompt=n,
                noise_index=lambda i, k: i * n + k,
                is_done=lambda i: all(epath.Path(image_path(out, i, k)).exists()
                                     for k in range(n)),
                write=write, read_manifest=read_manifest, write_manifest=write_manifest,
                finish=finish)


def _write_lines(path: str, lines: Sequence[str]) -> None:
  epath.Path(path).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _tile(path: str, size: int) -> np.ndarray:
  with epath.Path(path).open("rb") as f:
    image = Image.open(f).convert("RGB")
  if max(image.size) > size:
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.LANCZOS)
  return np.asarray(image)


# ----------------------------------------------------------------------------- command


def run(config, model, params, source: str, checkpoint_path: str, out: str, make_layout, *,
        layout_name: str, prompts: Sequence[str], samples_per_prompt: int,
        height: int | None = None, width: int | None = None, batch_size: int = 8,
        seed: int = 0, field_chunk_pixels: int = DEFAULT_FIELD_CHUNK_PIXELS,
        mesh: Mesh | None = None, **sampling_overrides) -> str:
  """The text-to-image command on a loaded checkpoint; returns `out`.

  Args:
    model, params, source: from `sample.load_checkpoint`.
    checkpoint_path: where a training run's stand-in text encoder may be.
    make_layout: (manifest dict) -> Layout for `out` and `prompts`.
    layout_name: recorded in the manifest ("prompts", "geneval", "dpg").
    height, width: output size (default config.data.resolution).
    sampling_overrides: flags over `sampling_settings` (None = unset).
  """
  settings = sampling_settings(config.sampling, **sampling_overrides)
  resolution = int(config.data.resolution)
  height, width = height or resolution, width or resolution
  model = model_for_size(model, resolution, height, width, field_chunk_pixels)
  encoder, text_params = load_text_encoder(config, model, checkpoint_path)
  manifest = manifest_for(settings, height=height, width=width, seed=seed,
                          samples_per_prompt=samples_per_prompt, prompts=prompts,
                          source=source, layout=layout_name)
  layout = make_layout(manifest)  # refuses settings the layout cannot hold
  check_manifest(layout.read_manifest(), manifest, out)
  # Only once everything is accepted: a refused run leaves no empty --out behind.
  epath.Path(out).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    layout.write_manifest(manifest)
  logging.debug("Sampling with %s", settings)
  if jax.process_index() == 0:
    print(f"[sample] {len(prompts)} prompts x {samples_per_prompt} images at {height}x{width} "
          f"from {source}", file=sys.stderr, flush=True)
  generate(layout, model, params, encoder, text_params, settings, height=height, width=width,
           batch_size=batch_size, seed=seed, mesh=mesh)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("pixnerd_t2i_samples_written")
  if jax.process_index() == 0:
    missing = [i for i in range(len(prompts)) if not layout.is_done(i)]
    if missing:
      raise FileNotFoundError(f"{len(missing)} prompts have no complete output, e.g. "
                              f"{missing[0]}; is --out on a filesystem all hosts share?")
    if layout.finish is not None:
      layout.finish()
  return out


# ----------------------------------------------------------------------------- the command


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
    from pixnerd_jax.sampling import dpg as dpg_lib  # pylint: disable=g-import-not-at-top
    names, prompts = dpg_lib.read_prompts(dpg)
    return prompts, lambda manifest: dpg_lib.layout(out, names, prompts, manifest), "dpg"
  if geneval:
    from pixnerd_jax.sampling import geneval as geneval_lib  # pylint: disable=g-import-not-at-top
    metadata = geneval_lib.read_metadata(geneval)
    return ([m["prompt"] for m in metadata],
            lambda manifest: geneval_lib.layout(out, metadata, samples_per_prompt), "geneval")
  prompts = list(prompts) if prompts else read_prompt_file(prompts_file)
  return (prompts, lambda manifest: prompt_layout(out, prompts, samples_per_prompt,
                                                             grid=grid), "prompts")


def run_text(config, checkpoint_path: str, out: str, *, prompts=None, prompts_file=None,
             geneval=None, dpg=None, samples_per_prompt: int = 4, online: bool = False,
             step: int | None = None, grid: bool = True, **kwargs) -> str:
  """The text-to-image command: exactly one of prompts (a list), prompts_file, geneval
  (an evaluation_metadata.jsonl) or dpg (a prompt folder). Returns `out`.

  kwargs: height, width, batch_size, seed, field_chunk_pixels and sampler overrides of
  `run`.
  """
  prompts, make_layout, layout_name = _text_request(
      out, prompts=prompts, prompts_file=prompts_file, geneval=geneval, dpg=dpg,
      samples_per_prompt=samples_per_prompt, grid=grid)
  mesh = trained_params.sampling_mesh(config)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step, mesh=mesh)
  return run(config, model, params, source, checkpoint_path, out, make_layout,
             layout_name=layout_name, prompts=prompts, samples_per_prompt=samples_per_prompt,
             mesh=mesh, **kwargs)


def dry_run_text_report(config, checkpoint_path: str, out: str, *, prompts=None,
                        prompts_file=None, geneval=None, dpg=None, samples_per_prompt: int = 4,
                        online: bool = False, step: int | None = None, grid: bool = True,
                        height: int | None = None, width: int | None = None,
                        batch_size: int = 8, seed: int = 0,
                        field_chunk_pixels: int = DEFAULT_FIELD_CHUNK_PIXELS,
                        **sampling_overrides) -> dict:
  """--dry_run of a text-to-image checkpoint: reads the prompts, the checkpoint and the
  text encoder, checks --out and traces the sampler on one abstract batch."""
  started = time.perf_counter()
  prompts, make_layout, layout_name = _text_request(
      out, prompts=prompts, prompts_file=prompts_file, geneval=geneval, dpg=dpg,
      samples_per_prompt=samples_per_prompt, grid=grid)
  settings = sampling_settings(config.sampling, **sampling_overrides)
  mesh = trained_params.sampling_mesh(config)
  model, params, source = load_checkpoint(checkpoint_path, config, online, step, mesh=mesh)
  dry_run.line("checkpoint", f"{source}: {count_params(params):,} params")
  res = int(config.data.resolution)
  height, width = height or res, width or res
  model = model_for_size(model, res, height, width, field_chunk_pixels)
  encoder, text_params = load_text_encoder(config, model, checkpoint_path)
  dry_run.line("text encoder", f"{count_params(text_params):,} params")
  manifest = manifest_for(settings, height=height, width=width, seed=seed,
                                     samples_per_prompt=samples_per_prompt, prompts=prompts,
                                     source=source, layout=layout_name)
  layout = make_layout(manifest)
  try:
    check_manifest(layout.read_manifest(), manifest, out)
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
  sample_fn = make_sample_fn(model, settings, (height, width, model.in_channels), mesh)
  replicated, batch = NamedSharding(mesh, P()), trained_params.batch_sharding(mesh)
  null = np.asarray(encoder.unconditional(text_params))  # computed once, cached
  text = jax.ShapeDtypeStruct((per_call,) + tuple(null.shape[1:]), null.dtype, sharding=batch)
  traced = sample_fn.trace(dry_run.abstract(params, trained_params.param_shardings(model, mesh)),
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
