"""What the trainer evaluates periodically: EMA sample grids, FID and Inception Score when
config.fid names their inputs, and the embedded job's own metrics (the digits judge)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pixnerd_jax.diffusion import samplers
from pixnerd_jax.embedded import digits_evaluation
from pixnerd_jax.evaluation import images as images_lib

GRID_COLUMNS = 8
FINAL_GRID_NAME = "samples_final.png"


class TrainingEvaluator:
  """Samples the EMA model with config.sampling; writes grids and metrics via `writer`.

  Class models sample labels (a grid row per class); text models sample captions:
  config.sampling.prompts (';'-separated), else the embedded job's prompts. An embedded
  job's evaluation (`embedded.digits_evaluation`) gives the conditions of its metric
  samples and scores them.
  """

  def __init__(self, config, model, workdir: str, writer, text=(None, None)):
    self._config = config
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

    def sample(params, noise, condition, null, num_steps):
      velocity = lambda x, t, y, h=None: model.apply({"params": params}, x, t, y, h)
      return samplers.sample(velocity, noise, condition, null_class=null,
                             **dict(settings, num_steps=num_steps))

    jitted = jax.jit(sample, static_argnums=4)
    if model.conditioning == "text":
      null = self._text_encoder.unconditional(self._text_params)
    self._sample = lambda params, noise, condition, num_steps=settings["num_steps"]: jitted(
        params, noise, condition, null, num_steps)

  def _conditions(self, conditions):
    """Labels as they are; captions through the frozen encoder (B, T, E)."""
    if self._model.conditioning != "text":
      return jnp.asarray(conditions, jnp.int32)
    return jnp.asarray(self._text_encoder.encode_texts(self._text_params, list(conditions)))

  def generate(self, params, conditions, seed: int, chunk: int = 250,
               num_steps: int | None = None) -> np.ndarray:
    """(N,) labels or N captions -> (N, H, W, C) float32 samples in model range, fixed
    noise per seed; num_steps: None = config.sampling.num_steps."""
    steps = {} if num_steps is None else dict(num_steps=num_steps)
    out = []
    for start in range(0, len(conditions), chunk):
      part = self._conditions(conditions[start:start + chunk])
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), start),
                                (len(part),) + self._shape)
      out.append(np.asarray(self._sample(params, noise, part, **steps)))
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
      logging.info("Wrote the final sample grid to %s", path)
    return path

  def evaluate(self, step: int, params, num_samples: int, final: bool = False) -> dict:
    """Metrics of class-balanced EMA samples: the embedded job's own (the digits judge),
    or FID and Inception Score when config.fid names Inception weights and reference
    statistics."""
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
        self._fid_inputs = (variables, fid.load_reference_stats(fid_config.reference, variables))
      metrics = fid.fid_from_samples(images_lib.to_uint8(samples), *self._fid_inputs)
      name = "fid"
    else:
      metrics = dict(self._job.metrics(samples, labels), **extra)
      name = self._job.name
    prefix = "final" if final else "eval"
    self._writer.write_scalars(step, {f"{prefix}/{name}_{k}": v for k, v in metrics.items()})
    logging.info("Step %d %s: %s", step, prefix, metrics)
    return metrics
