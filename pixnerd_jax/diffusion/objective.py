"""Flow-matching objective of the reference trainer (spec 4.1).

Linear path x_t = t x + (1 - t) eps with t = 1 the data; the network predicts the
velocity x - eps. All time arithmetic is float32.
"""

import jax
import jax.numpy as jnp


def shift_time(t, shift: float):
  """t / (t + (1 - t) shift): shift > 1 moves mass toward noise (t = 0)."""
  return t / (t + (1.0 - t) * shift)


def sample_time(rng, batch: int, *, distribution: str = "logit_normal", mean: float = 0.0,
                std: float = 1.0, shift: float = 1.0):
  """(batch,) float32 times in [0, 1]: sigmoid(N(mean, std)) or uniform, then shifted."""
  if distribution == "logit_normal":
    t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,), jnp.float32))
  elif distribution == "uniform":
    t = jax.random.uniform(rng, (batch,), jnp.float32)
  else:
    raise ValueError(f"Unknown time distribution {distribution!r}: use 'logit_normal' or "
                     "'uniform'.")
  return shift_time(t, shift)


def drop_labels(rng, labels, *, probability: float, null_class: int):
  """Replaces each label by the null class with `probability` (classifier-free guidance)."""
  drop = jax.random.uniform(rng, labels.shape) < probability
  return jnp.where(drop, null_class, labels)


def interpolate(x, noise, t):
  """x_t and the velocity target for images x, noise (B, H, W, C) and t (B,)."""
  t_ = t.astype(jnp.float32)[:, None, None, None]
  return t_ * x + (1.0 - t_) * noise, x - noise


def flow_matching_inputs(rng, images, labels, *, null_class: int | None, label_dropout: float,
                         time_distribution: str = "logit_normal", time_mean: float = 0.0,
                         time_std: float = 1.0, time_shift: float = 1.0):
  """Draws (x_t, t, y, target) for one batch: images (B, H, W, C) in [-1, 1], labels (B,).

  labels may be any per-sample condition (text features) when label_dropout is 0: the
  text model drops captions before encoding them (train.text_condition).
  """
  rng_t, rng_noise, rng_drop = jax.random.split(rng, 3)
  t = sample_time(rng_t, images.shape[0], distribution=time_distribution, mean=time_mean,
                  std=time_std, shift=time_shift)
  noise = jax.random.normal(rng_noise, images.shape, jnp.float32)
  x_t, target = interpolate(images.astype(jnp.float32), noise, t)
  y = labels
  if label_dropout > 0:
    y = drop_labels(rng_drop, labels, probability=label_dropout, null_class=null_class)
  return x_t, t, y, target


def velocity_loss(prediction, target):
  """Mean squared error over every element, in float32."""
  return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target))
