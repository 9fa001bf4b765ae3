"""Entry point: python -m pixnerd_jax.main --config=configs/digits.py --workdir=DIR.

Starting again with the same workdir resumes from its latest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pixnerd_jax.data import DataError
from pixnerd_jax.runtime import cli
from pixnerd_jax.runtime import console
from pixnerd_jax.runtime import distributed
from pixnerd_jax.runtime.mesh import MeshError
from pixnerd_jax.training import dry_run
from pixnerd_jax.training import train
from pixnerd_jax.training.checkpoint import CheckpointError
from pixnerd_jax.training.validation import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events and samples go here.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-process runs started by hand. TPU pods "
                    "and SLURM are detected without it.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("dry_run", False,
                  "Check and build everything the run needs (config, workdir, mesh, what it "
                  "loads, the first batch, the train step traced on abstract inputs), print "
                  "a summary with the memory per device of the train state, and exit.")
flags.DEFINE_bool("dry_run_compile", False,
                  "--dry_run that also compiles the train step for this backend and prints "
                  "XLA's memory analysis per device (takes minutes for XL/16).")
flags.mark_flags_as_required(["config", "workdir"])

# Errors whose messages say what to fix: printed as one line, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, DataError, MeshError, train.NonFiniteLossError,
               OSError)


@console.entry_point(known=USER_ERRORS,
                 oom_hint="lower --config.batch_size, set --config.model.remat_policy=blocks "
                 "or shard over more devices (--config.mesh.fsdp=-1)")
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_start(training=True)
  try:
    kind = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if kind:
    logging.info("jax.distributed initialized (%s).", kind)
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  if FLAGS.dry_run or FLAGS.dry_run_compile:
    return dry_run.report_errors(dry_run.train, FLAGS.config, FLAGS.workdir,
                                 compile_step=FLAGS.dry_run_compile)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  cli.run(main)
