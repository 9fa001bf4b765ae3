"""Entry point: python -m pixnerd_jax.main --config=configs/digits.py --workdir=DIR.

Starting again with the same workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pixnerd_jax import train
from pixnerd_jax.checkpoint import CheckpointError
from pixnerd_jax.validation import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events and samples go here.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-process runs started by hand. TPU pods "
                    "and SLURM are detected without it.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables that mean "one of several processes": SLURM, TPU pods, and JAX's own.
_CLUSTER_ENV = ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "JAX_COORDINATOR_ADDRESS")


def _initialize_distributed() -> None:
  """jax.distributed.initialize() for explicit flags, SLURM or a TPU pod; else nothing."""
  # CPU processes need a collectives backend; harmless on GPU/TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if FLAGS.coordinator_address:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    return
  multi = [k for k in _CLUSTER_ENV if os.environ.get(k)]
  if os.environ.get("SLURM_NTASKS", "1") == "1" and multi == ["SLURM_NTASKS"]:
    return  # a single SLURM task
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") == 0 and multi == [
      "TPU_WORKER_HOSTNAMES"]:
    return  # a single-host TPU VM
  if multi:
    jax.distributed.initialize()


class _QuietLibraries:
  """Drops INFO records from Orbax's very chatty checkpoint logging."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _initialize_distributed()
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, CheckpointError, train.NonFiniteLossError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
