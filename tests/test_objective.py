"""The flow-matching objective against spec 4.1: logit-normal times and their shift, the
linear path and its velocity target, per-sample label dropout to the null class."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixnerd_jax.diffusion import objective

N = 20_000


def test_logit_normal_times_are_sigmoid_of_a_standard_normal():
  t = np.asarray(objective.sample_time(jax.random.key(0), N))
  assert t.dtype == np.float32 and ((t > 0) & (t < 1)).all()
  logits = np.log(t / (1 - t))
  assert abs(logits.mean()) < 0.03 and abs(logits.std() - 1.0) < 0.03
  shifted = np.asarray(objective.sample_time(jax.random.key(0), N, shift=4.0))
  np.testing.assert_allclose(shifted, t / (t + (1 - t) * 4.0), rtol=1e-6)
  assert shifted.mean() < t.mean()  # shift > 1 moves mass toward noise (t = 0)
  with pytest.raises(ValueError, match="Unknown time distribution"):
    objective.sample_time(jax.random.key(0), 2, distribution="beta")


def test_path_runs_from_noise_to_data_and_the_target_is_data_minus_noise():
  rng = np.random.default_rng(0)
  x, eps = rng.normal(size=(3, 2, 2, 3)), rng.normal(size=(3, 2, 2, 3))
  t = jnp.asarray([0.0, 0.25, 1.0])
  x_t, target = objective.interpolate(jnp.asarray(x), jnp.asarray(eps), t)
  np.testing.assert_allclose(x_t[0], eps[0], atol=1e-6)   # t = 0: pure noise
  np.testing.assert_allclose(x_t[2], x[2], atol=1e-6)     # t = 1: the data
  np.testing.assert_allclose(x_t[1], 0.25 * x[1] + 0.75 * eps[1], atol=1e-6)
  np.testing.assert_allclose(target, x - eps, atol=1e-6)


def test_inputs_drop_labels_per_sample_to_the_null_class():
  images = jnp.zeros((N, 1, 1, 1))
  labels = jnp.arange(N) % 7
  x_t, t, y, target = objective.flow_matching_inputs(
      jax.random.key(1), images, labels, null_class=7, label_dropout=0.1)
  dropped = np.asarray(y) == 7
  assert abs(dropped.mean() - 0.1) < 0.01
  np.testing.assert_array_equal(np.asarray(y)[~dropped], np.asarray(labels)[~dropped])
  # images are 0, so x_t = (1 - t) eps and target = -eps.
  np.testing.assert_allclose(np.asarray(x_t)[:, 0, 0, 0],
                             -(1 - np.asarray(t)) * np.asarray(target)[:, 0, 0, 0], atol=1e-6)
  _, _, kept, _ = objective.flow_matching_inputs(
      jax.random.key(1), images, labels, null_class=7, label_dropout=0.0)
  np.testing.assert_array_equal(kept, labels)
