"""FLOPs per train step, peak rates by device kind, and MFU."""

import jax
import jax.numpy as jnp
import pytest

from configs import tiny
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import flops
from pixnerd_jax.training import train


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA B200", 2250e12), ("cpu", None),
    ("TPU v3", None)])
def test_peak_by_device_kind(kind, peak):
  assert flops.peak_flops(kind) == peak


def test_mfu_only_with_a_known_peak():
  known = flops.StepFlops(per_device=2e12, source="x", peak=4e12)
  assert known.tflops_and_mfu(0.5) == {"tflops_per_device": 1.0, "mfu": 0.25}
  assert flops.StepFlops(2e12, "x", None).tflops_and_mfu(0.5) == {"tflops_per_device": 1.0}


def _lowered_step(scan_blocks: bool):
  config = tiny.get_config()
  config.model.scan_blocks = scan_blocks
  program = train.build_train_program(config, mesh_lib.create_mesh(config.mesh))
  state = program.state_shapes
  b, s = config.batch_size, config.data.resolution
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  with mesh_lib.activate(program.mesh):
    return config, program.step.lower(state, batch, None)


def test_step_count_is_xla_unscanned_and_analytic_when_scanned():
  """XLA's count of the unscanned step agrees with the analytic one (which leaves out the
  elementwise work: norms, activations, AdamW); with scan_blocks XLA sees one block only,
  so the analytic count is the one used, and it is the same maths as unscanned."""
  config, plain = _lowered_step(scan_blocks=False)
  b, s = config.batch_size, config.data.resolution
  analytic = flops.train_step_flops(config.model, b, s, s)
  counted = flops.count_step_flops(plain, config.model, global_batch=b, height=s, width=s,
                                   num_devices=jax.device_count(), device_kind="cpu")
  assert counted.source == "XLA cost analysis"
  assert 0.75 * counted.per_device < analytic / jax.device_count() <= counted.per_device

  config, scanned = _lowered_step(scan_blocks=True)
  assert flops.xla_flops(scanned) < 0.9 * flops.xla_flops(plain)  # the under-count
  counted = flops.count_step_flops(scanned, config.model, global_batch=b, height=s,
                                   width=s, num_devices=jax.device_count(),
                                   device_kind="TPU v4")
  assert counted.source.startswith("analytic count: scan_blocks")
  assert counted.per_device == analytic / jax.device_count()
  assert counted.peak == 275e12


@pytest.mark.parametrize("preset_config", ["tiny", "tiny_t2i"])
def test_forward_count_matches_xla_for_both_models(preset_config):
  """The analytic forward (matmuls only) is within 15% of XLA's count of the forward,
  which adds the elementwise work; for the class and the text model."""
  import importlib
  from pixnerd_jax import models
  config = importlib.import_module(f"configs.{preset_config}").get_config()
  model = models.build_model(config.model)
  b, s = 8, 32
  shapes = jax.ShapeDtypeStruct
  if config.model.get("conditioning", "class") == "text":
    y = shapes((b, config.model.txt_max_length, config.model.txt_embed_dim), jnp.float32)
  else:
    y = shapes((b,), jnp.int32)
  lowered = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y)).lower(
      models.param_shapes(model), shapes((b, s, s, 3), jnp.float32),
      shapes((b,), jnp.float32), y)
  analytic = sum(flops.forward_flops(config.model, b, s, s).values())
  assert 0.85 * flops.xla_flops(lowered) < analytic <= flops.xla_flops(lowered)
