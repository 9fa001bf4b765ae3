"""The XLA flags the training entry point sets for itself on the CPU backend."""

import os
import subprocess
import sys

import pytest

from pixnerd_jax.runtime import xla_cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = xla_cpu_flags.YNN_REDUCE_FLAG


@pytest.fixture
def xla_flags(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  return monkeypatch


def test_added_on_the_cpu_backend_beside_the_users_flags(xla_flags):
  xla_flags.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert xla_cpu_flags.for_cpu_training("cpu")
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", FLAG]
  assert xla_cpu_flags.for_cpu_training("cpu")  # a second call adds nothing
  assert os.environ["XLA_FLAGS"].split().count(FLAG) == 1


def test_left_alone_off_cpu_and_when_the_user_set_it(xla_flags):
  for platforms in ("tpu", "cuda,cpu", "", None):
    assert not xla_cpu_flags.for_cpu_training(platforms)
    assert "XLA_FLAGS" not in os.environ
  xla_flags.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert not xla_cpu_flags.for_cpu_training("cpu")
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from pixnerd_jax.runtime import console
from pixnerd_jax import main  # everything the entry point imports comes before its start-up
console.quiet_start(training={training})
import jax, jax.numpy as jnp
from pixnerd_jax.models.nerf import NerfBlock
h, s = jnp.ones((256, 64, 32)), jnp.ones((256, 64))
block = NerfBlock(2)
params = block.init(jax.random.key(0), h, s)
loss = lambda p, h: jnp.sum(block.apply(p, h, s) ** 2)
compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, h).compile()
print(os.environ.get("XLA_FLAGS", ""), "|", compiled.memory_analysis().temp_size_in_bytes)
"""


def _probe(training: bool) -> tuple[str, int]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT, training=training)],
                       env=env, capture_output=True, text=True, check=True, timeout=300)
  flags, temp = out.stdout.strip().splitlines()[-1].split("|")
  return flags.strip(), int(temp)


def test_training_entry_point_sets_it_and_the_backward_needs_less_scratch():
  """The real effect: a neural-field block's backward compiles to less scratch memory
  (no materialised RMSNorm broadcasts) once the training start-up has set the flag."""
  flags_train, temp_train = _probe(training=True)
  flags_other, temp_other = _probe(training=False)
  assert FLAG in flags_train.split() and FLAG not in flags_other.split()
  assert temp_train < 0.85 * temp_other, (temp_train, temp_other)
