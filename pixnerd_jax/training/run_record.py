"""What a run records about itself in its workdir, and the one start line it prints.

The full config (`config.json`) and the parameter table (`parameters.txt`) go to the
workdir, the hyperparameters to TensorBoard's hparams; the console gets them only at
--verbosity=1 (absl debug level). Metrics go to TensorBoard only (the console has the
progress lines of progress.py); at debug level every scalar is logged too.
"""

import os

from absl import logging
from etils import epath
import ml_collections

CONFIG_FILE = "config.json"
PARAMETERS_FILE = "parameters.txt"


def create_writer(workdir: str, is_chief: bool):
  """clu metric writer: TensorBoard events on process 0, nothing elsewhere; plus a
  logging writer at debug level."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  writers = []
  if is_chief:
    writers.append(metric_writers.SummaryWriter(os.fspath(epath.Path(workdir))))
  if logging.get_verbosity() >= logging.DEBUG:
    writers.append(metric_writers.LoggingWriter())
  return metric_writers.AsyncMultiWriter(writers)


def write_run_files(workdir: str, config: ml_collections.ConfigDict, parameters: str) -> None:
  """Writes config.json and parameters.txt (overwritten at every start: a resumed run
  may have overridden fields)."""
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  (root / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  (root / PARAMETERS_FILE).write_text(parameters + "\n")


def start_line(config: ml_collections.ConfigDict, workdir: str, num_params: int, mesh,
               initial_step: int) -> str:
  """Three lines: what trains where, where its record is, how to see its curves (the
  workdir once a line, so a long path keeps the lines short)."""
  devices = mesh.devices.size
  platform = mesh.devices.flat[0].platform
  mesh_text = "x".join(f"{k}={v}" for k, v in mesh.shape.items() if v > 1)
  if initial_step:
    start = f"from step {initial_step}"
  elif config.meanflow.get("enabled") and config.meanflow.get("teacher"):
    start = "from the MeanFlow teacher's weights"
  elif config.get("init_from"):
    start = f"from the params of {config.init_from}"
  else:
    start = "from scratch"
  return (f"Training {config.model.get('preset', 'model')} ({num_params:,} params) on "
          f"{devices} {platform} device{'s' * (devices > 1)}"
          f"{f' (mesh {mesh_text})' if mesh_text else ''}, batch {config.batch_size}, "
          f"{config.num_train_steps} steps {start}, a line every {config.log_every} steps.\n"
          f"Config and parameter table: {workdir}/{{{CONFIG_FILE},{PARAMETERS_FILE}}} "
          f"(--verbosity=1 prints them)\n"
          f"Curves: tensorboard --logdir {workdir}")
