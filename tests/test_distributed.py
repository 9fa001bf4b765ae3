"""When the trainer calls jax.distributed.initialize(), decided from the environment."""

import pytest

from pixnerd_jax.runtime.distributed import initialization_kind

TPU = ["/dev/vfio/0", "/dev/vfio/1"]


@pytest.mark.parametrize("environ, coordinator, tpu, expected", [
    ({}, None, [], None),                                          # laptop, CI, one GPU box
    ({}, "10.0.0.1:1234", [], "explicit"),                         # flags win
    ({"SLURM_NTASKS": "1"}, None, [], None),                       # one SLURM task
    ({"SLURM_NTASKS": "16"}, None, [], "cluster"),                 # multi-node SLURM job
    ({"TPU_WORKER_HOSTNAMES": "t-w-0"}, None, [], None),           # single-host slice
    ({"TPU_WORKER_HOSTNAMES": "t-w-0,t-w-1"}, None, TPU, "cluster"),  # pod (GKE)
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, None, TPU, "cluster"),  # multislice
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.3:1234"}, None, [], "cluster"),
    ({}, None, TPU, "tpu_vm"),                                     # gcloud TPU VM, no env
    ({}, None, ["/dev/accel0"], "tpu_vm"),                         # v4 chips
    ({"SLURM_NTASKS": "1"}, None, TPU, "tpu_vm"),
])
def test_initialization_kind(environ, coordinator, tpu, expected):
  assert initialization_kind(environ, coordinator, tpu) == expected
