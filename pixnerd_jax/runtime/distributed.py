"""When and how to call jax.distributed.initialize() for a multi-process run.

One process per host (TPU pods, GPU nodes) or per GPU (SLURM) must all call
initialize() before touching a device. This module decides from the environment:
  explicit  --coordinator_address/--num_processes/--process_id were given;
  cluster   a scheduler or launcher says there are several processes (SLURM with
            several tasks, a TPU pod's TPU_WORKER_HOSTNAMES, Megascale, JAX's own
            variables): JAX reads the rest from the same variables;
  tpu_vm    TPU chips are attached to this host but nothing is set, as on VMs made by
            `gcloud compute tpus tpu-vm create`: JAX asks the GCE metadata server for
            the slice's workers (one worker = a one-process run);
  None      a single process (laptop, one GPU box, CI).
"""

import glob
import os
from typing import Mapping

from absl import logging
import jax

# Variables that mean "one of several processes".
CLUSTER_ENV = ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
               "JAX_COORDINATOR_ADDRESS")
# TPU v2-v4 chips appear as /dev/accelN, v5e and later as VFIO groups /dev/vfio/N.
TPU_DEVICE_PATTERNS = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def local_tpu_device_paths() -> list[str]:
  return sorted(p for pattern in TPU_DEVICE_PATTERNS for p in glob.glob(pattern))


def initialization_kind(environ: Mapping[str, str], coordinator_address: str | None,
                        tpu_device_paths: list[str]) -> str | None:
  """'explicit', 'cluster', 'tpu_vm' or None (single process); see the module doc."""
  if coordinator_address:
    return "explicit"
  present = [k for k in CLUSTER_ENV if environ.get(k)]
  if environ.get("SLURM_NTASKS", "1") == "1" and "SLURM_NTASKS" in present:
    present.remove("SLURM_NTASKS")  # a single SLURM task
  if "TPU_WORKER_HOSTNAMES" in present and "," not in environ["TPU_WORKER_HOSTNAMES"]:
    present.remove("TPU_WORKER_HOSTNAMES")  # a single-host slice
  if present:
    return "cluster"
  if tpu_device_paths:
    return "tpu_vm"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str | None:
  """Calls jax.distributed.initialize() if this is one of several processes.

  Returns the initialization kind. Must run before anything touches a device.
  """
  # CPU processes need a collectives backend; harmless on GPU/TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kind = initialization_kind(os.environ, coordinator_address, local_tpu_device_paths())
  if kind == "explicit":
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif kind == "cluster":
    jax.distributed.initialize()
  elif kind == "tpu_vm":
    try:
      jax.distributed.initialize()
    except ValueError as e:  # JAX found no slice description: run as one process
      logging.warning("TPU devices found but no multi-host slice (%s); running as a single "
                      "process.", e)
      kind = None
  return kind
