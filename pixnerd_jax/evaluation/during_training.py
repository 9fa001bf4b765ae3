"""What the trainer evaluates periodically: EMA sample grids and, for digits, judge metrics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pixnerd_jax.diffusion import samplers
from pixnerd_jax.evaluation import images as images_lib

GRID_COLUMNS = 8
FINAL_GRID_NAME = "samples_final.png"


class TrainingEvaluator:
  """Samples the EMA model with config.sampling; writes grids and metrics via `writer`."""

  def __init__(self, config, model, workdir: str, writer):
    self._config = config
    self._model = model
    self._workdir = workdir
    self._writer = writer
    self._judge = None
    self._fid_inputs = None
    s = config.sampling
    shape = (config.data.resolution, config.data.resolution, model.in_channels)
    self._shape = shape

    def sample(params, noise, labels):
      velocity = lambda x, t, y: model.apply({"params": params}, x, t, y)
      return samplers.euler_sample(
          velocity, noise, labels, num_steps=s.num_steps, guidance=s.guidance,
          guidance_interval=(s.guidance_interval_min, s.guidance_interval_max),
          timeshift=s.timeshift, last_step=s.last_step, null_class=model.num_classes)

    self._sample = jax.jit(sample)

  def generate(self, params, labels: np.ndarray, seed: int, chunk: int = 250) -> np.ndarray:
    """(N,) labels -> (N, H, W, C) float32 samples in model range, fixed noise per seed."""
    out = []
    for start in range(0, len(labels), chunk):
      part = jnp.asarray(labels[start:start + chunk], jnp.int32)
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), start),
                                (len(part),) + self._shape)
      out.append(np.asarray(self._sample(params, noise, part)))
    return np.concatenate(out)

  def grid(self, params) -> np.ndarray:
    rows = min(self._config.grid_classes, self._model.num_classes)
    labels = np.repeat(np.arange(rows), GRID_COLUMNS)
    samples = self.generate(params, labels, seed=self._config.seed + 1)
    return images_lib.make_grid(images_lib.to_uint8(samples), rows)

  def write_sample_grid(self, step: int, params) -> None:
    self._writer.write_images(step, {"samples/ema": self.grid(params)[None]})

  def save_final_grid(self, params) -> str:
    path = os.path.join(self._workdir, FINAL_GRID_NAME)
    if jax.process_index() == 0:
      images_lib.save_png(self.grid(params), path)
      logging.info("Wrote the final sample grid to %s", path)
    return path

  def evaluate(self, step: int, params, num_samples: int, final: bool = False) -> dict:
    """Metrics of class-balanced EMA samples: the digits judge for the digits job, FID and
    Inception Score when config.fid names Inception weights and reference statistics."""
    fid_config = self._config.fid
    use_fid = bool(fid_config.inception and fid_config.reference)
    if num_samples <= 0 or (self._config.data.name != "digits" and not use_fid):
      return {}
    labels = np.arange(num_samples) % self._model.num_classes
    samples = self.generate(params, labels, seed=self._config.seed + 2)
    if use_fid:
      from pixnerd_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
      if self._fid_inputs is None:
        variables = fid.inception.load_variables(fid_config.inception)
        self._fid_inputs = (variables, fid.load_reference_stats(fid_config.reference, variables))
      metrics = fid.fid_from_samples(images_lib.to_uint8(samples), *self._fid_inputs)
      name = "fid"
    else:
      if self._judge is None:
        from pixnerd_jax.evaluation.digits_judge import DigitsJudge  # pylint: disable=g-import-not-at-top
        self._judge = DigitsJudge(resolution=self._config.data.resolution)
      metrics = self._judge.metrics(samples, labels)
      name = "digits"
    prefix = "final" if final else "eval"
    self._writer.write_scalars(step, {f"{prefix}/{name}_{k}": v for k, v in metrics.items()})
    logging.info("Step %d %s: %s", step, prefix, metrics)
    return metrics
