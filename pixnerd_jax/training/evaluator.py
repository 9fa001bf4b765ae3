"""What the trainer evaluates periodically: EMA sample grids, FID and Inception Score when
config.fid names their inputs, and the embedded job's own metrics (the digits judge)."""

import math
import os

import jax
import numpy as np
from absl import logging

from pixnerd_jax.diffusion import samplers
from pixnerd_jax.embedded import digits_evaluation
from pixnerd_jax.evaluation import images as images_lib
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import progress

GRID_COLUMNS = 8
FINAL_GRID_NAME = "samples_final.png"


class TrainingEvaluator:
  """Samples the EMA model with config.sampling; writes grids and metrics via `writer`.

  Class models sample labels (a grid row per class); text models sample captions:
  config.sampling.prompts (';'-separated), else the embedded job's prompts. An embedded
  job's evaluation (`embedded.digits_evaluation`) gives the conditions of its metric
  samples and scores them.

  Sampling runs on the whole `mesh` (the batch split like the training batch, so every
  process of a multi-host run takes part) and every process gets all samples; only
  process 0 writes files (the writer of the others only logs).
  """

  def __init__(self, config, model, workdir: str, writer, mesh, text=(None, None)):
    self._config = config
    self._mesh = mesh
    self._model = model
    self._workdir = workdir
    self._writer = writer
    self._job = digits_evaluation.evaluation_for(config)
    self._fid_inputs = None
    self._text_encoder, self._text_params = text
    self._shape = (config.data.resolution, config.data.resolution, model.in_channels)
    settings = samplers.settings_from_config(config.sampling)
    # Metrics also at these step counts (e.g. a few-step sampler's 2 and 4), named
    # <metric>_<n>_steps.
    self._extra_num_steps = tuple(int(n) for n in config.sampling.get("extra_eval_num_steps",
                                                                       ()))
    null = model.num_classes

    self._batch_sharding = mesh_lib.batch_sharding(mesh)
    shape = self._shape

    def sample(params, seed, start, condition, null, num_steps):
      key = jax.random.fold_in(jax.random.key(seed), start)
      noise = jax.random.normal(key, (condition.shape[0],) + shape)
      noise = jax.lax.with_sharding_constraint(noise, self._batch_sharding)
      # h: the interval, which only the meanflow sampler passes (an average-velocity model).
      velocity = lambda x, t, y, h=None: model.apply({"params": params}, x, t, y, h)
      # The key feeds the SDE steps (config.sampling.step_fn); ODE steps ignore it.
      return samplers.sample(velocity, noise, condition, null_class=null,
                             key=jax.random.fold_in(key, 1),
                             **dict(settings, num_steps=num_steps))

    # Replicated out: each process holds every sample (an all-gather over the mesh).
    jitted = jax.jit(sample, static_argnums=5, out_shardings=mesh_lib.replicated(mesh))
    if model.conditioning == "text":
      null = self._text_encoder.unconditional(self._text_params)
    self._sample = lambda params, seed, start, condition, num_steps=settings["num_steps"]: (
        jitted(params, np.uint32(seed), np.uint32(start), condition, null, num_steps))

  def _conditions(self, conditions) -> np.ndarray:
    """Labels as they are (B,); captions through the frozen encoder (B, T, E)."""
    if self._model.conditioning != "text":
      return np.asarray(conditions, np.int32)
    with mesh_lib.activate(self._mesh):
      return np.asarray(self._text_encoder.encode_texts(self._text_params, list(conditions)))

  def _split_over_mesh(self, host: np.ndarray) -> jax.Array:
    """The same host array on every process -> one global array, its batch split over
    the mesh (padded with copies of the last row to a multiple of the batch shards)."""
    shards = math.prod(self._mesh.shape[a] for a in mesh_lib.BATCH_AXES)
    padding = -len(host) % shards
    if padding:
      host = np.concatenate([host, np.repeat(host[-1:], padding, axis=0)])
    return jax.make_array_from_callback(host.shape, self._batch_sharding,
                                        lambda index: host[index])

  def generate(self, params, conditions, seed: int, chunk: int = 256,
               num_steps: int | None = None) -> np.ndarray:
    """(N,) labels or N captions -> (N, H, W, C) float32 samples in model range, fixed
    noise per seed; num_steps: None = config.sampling.num_steps. Every process must call
    it with the same arguments."""
    steps = {} if num_steps is None else dict(num_steps=num_steps)
    out = []
    for start in range(0, len(conditions), chunk):
      part = self._conditions(conditions[start:start + chunk])
      with mesh_lib.activate(self._mesh):
        samples = self._sample(params, seed, start, self._split_over_mesh(part), **steps)
      out.append(np.asarray(samples)[:len(part)])
    return np.concatenate(out)

  def _grid_conditions(self):
    """(conditions for GRID_COLUMNS samples each, number of rows) or (None, 0)."""
    if self._model.conditioning != "text":
      rows = min(self._config.grid_classes, self._model.num_classes)
      return np.repeat(np.arange(rows), GRID_COLUMNS), rows
    prompts = [p.strip() for p in self._config.sampling.get("prompts", "").split(";")]
    prompts = [p for p in prompts if p]
    if not prompts and self._job is not None:
      prompts = self._job.grid_prompts(self._config.grid_classes)
    if not prompts:
      return None, 0
    return [p for p in prompts for _ in range(GRID_COLUMNS)], len(prompts)

  def grid_size(self) -> int:
    """Samples in one grid (0: no grid)."""
    conditions, _ = self._grid_conditions()
    return 0 if conditions is None else len(conditions)

  def has_metrics(self) -> bool:
    """Whether `evaluate` computes anything (the embedded job's metrics or FID)."""
    fid_config = self._config.fid
    use_fid = bool(fid_config.inception and fid_config.reference)
    return self._job is not None or (use_fid and self._model.conditioning != "text")

  def grid(self, params) -> np.ndarray | None:
    conditions, rows = self._grid_conditions()
    if conditions is None:
      return None
    samples = self.generate(params, conditions, seed=self._config.seed + 1)
    return images_lib.make_grid(images_lib.to_uint8(samples), rows)

  def write_sample_grid(self, step: int, params) -> None:
    grid = self.grid(params)
    if grid is not None:
      self._writer.write_images(step, {"samples/ema": grid[None]})

  def save_final_grid(self, params) -> str | None:
    path = os.path.join(self._workdir, FINAL_GRID_NAME)
    grid = self.grid(params)
    if grid is None:
      return None
    if jax.process_index() == 0:
      images_lib.save_png(grid, path)
      logging.debug("Wrote the final sample grid to %s", path)
    return path

  def evaluate(self, step: int, params, num_samples: int, final: bool = False) -> dict:
    """Metrics of class-balanced EMA samples: the embedded job's own (the digits judge),
    or the ADM suite's FID, sFID, IS, precision and recall when config.fid names
    Inception weights and a reference (sFID needs its mu_s/sigma_s, precision/recall its
    images)."""
    fid_config = self._config.fid
    use_fid = bool(fid_config.inception and fid_config.reference)
    if num_samples <= 0 or (self._job is None and not use_fid):
      return {}
    if self._job is not None:
      conditions, labels = self._job.conditions(num_samples, self._model.num_classes)
    elif self._model.conditioning == "text":
      return {}  # FID of text models needs prompts: python -m pixnerd_jax.sample
    else:
      conditions = labels = np.arange(num_samples) % self._model.num_classes
    samples = self.generate(params, conditions, seed=self._config.seed + 2)
    extra = {}
    if self._job is not None:
      for n in self._extra_num_steps:
        more = self.generate(params, conditions, seed=self._config.seed + 2, num_steps=n)
        extra.update({f"{k}_{n}_steps": v for k, v in self._job.metrics(more, labels).items()})
    if use_fid:
      from pixnerd_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
      if self._fid_inputs is None:
        variables = fid.inception.load_variables(fid_config.inception)
        self._fid_inputs = (variables, fid.load_reference(fid_config.reference, variables))
      metrics = fid.fid_from_samples(images_lib.to_uint8(samples), *self._fid_inputs)
      name = "fid"
    else:
      metrics = dict(self._job.metrics(samples, labels), **extra)
      name = self._job.name
    prefix = "final" if final else "eval"
    self._writer.write_scalars(step, {f"{prefix}/{name}_{k}": v for k, v in metrics.items()})
    progress.say(progress.metrics_line(step, prefix, {f"{name}_{k}": v
                                                      for k, v in metrics.items()}))
    return metrics
