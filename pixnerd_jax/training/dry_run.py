"""Dry runs: what a command checks, loads and builds before its real work; nothing run.

  python -m pixnerd_jax.main --config=configs/imagenet256.py --workdir=DIR --dry_run

Training (`train`): validates the config and that the workdir is writable, builds the
mesh, loads what the run would load (DINOv2 for REPA, the init_from params, or the
metadata of the checkpoint it would resume from), reads the input pipeline's first
batch, builds the train program and traces the train step on abstract inputs (shapes
only; nothing is put on a device). Prints the model size, the batch and the bytes per
device of the sharded train state; with `compile_step` it also compiles the step for
this backend and prints XLA's memory analysis per device (minutes for XL/16).
`sample.dry_run_report` is the same for `python -m pixnerd_jax.sample --dry_run`.

Problems the run would hit come out as one line and exit code 1, as in the real run.
"""

import math
import sys
import time

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from pixnerd_jax.training import checkpoint
from pixnerd_jax import data as data_lib
from pixnerd_jax import models
from pixnerd_jax.training import repa
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import teacher as teacher_lib
from pixnerd_jax.training import train as train_lib
from pixnerd_jax.training import validation

GIB = 2**30
# What a dry run reports as a problem with the user's setup (exit 1, one line).
PROBLEMS = (validation.ConfigError, checkpoint.CheckpointError, FileNotFoundError,
            ValueError, OSError)


class DryRunError(ValueError):
  """Something the real run would trip over, found by the dry run."""


def line(key: str, text: str) -> None:
  print(f"{key:<15} {text}", flush=True)


def _gib(n: float) -> str:
  """Bytes as GiB, or MiB below a GiB."""
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def abstract(tree, shardings):
  """Arrays or shapes -> ShapeDtypeStructs carrying `shardings` (a tree or one sharding)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def bytes_per_device(shapes, shardings) -> int:
  """Bytes of the largest per-device shard of a sharded tree, summed over its leaves."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, shapes)
  sizes = jax.tree.map(
      lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
      shapes, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def report_errors(fn, *args, **kwargs) -> int:
  """Runs a dry run; returns 0, or prints `error: ...` and returns 1 on a setup problem."""
  try:
    fn(*args, **kwargs)
  except PROBLEMS as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


# ----------------------------------------------------------------------------- training


def _latest_step(workdir: str) -> int | None:
  """The step of the latest complete checkpoint in workdir (read-only), or None."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = checkpoint.absolute(workdir) / "checkpoints"
  if not directory.exists():
    return None
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  with ocp.CheckpointManager(directory, options=options,
                             item_names=("state", "data")) as manager:
    return manager.latest_step()


def _saved_param_shapes(workdir: str, step: int):
  """The params of a training checkpoint as ShapeDtypeStructs, from its metadata only."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = checkpoint.absolute(workdir) / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(path).item_metadata
  is_array = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata["params"],
                      is_leaf=is_array)


def _start(config, workdir: str, program: train_lib.TrainProgram) -> str:
  """How the run would start, checked as far as it can be without restoring the state."""
  step = _latest_step(workdir)
  if step is not None:
    try:
      saved = _saved_param_shapes(workdir, step)
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      return (f"resumes from the checkpoint of step {step} (its metadata could not be "
              f"read: {e}; the run will try to restore it)")
    checkpoint.match_params(saved, program.state_shapes.params,
                            f"the checkpoint of step {step} in {workdir}")
    # As the run's restore: the optimizer state (and EMA, aux params) must match too.
    checkpoint.check_written_with_this_config(
        checkpoint.absolute(workdir) / "checkpoints", step, program.state_shapes)
    return (f"resumes from the checkpoint of step {step} (params and optimizer state match "
            "the config)")
  if program.teacher is not None:
    return f"params and EMA from the teacher {config.meanflow.teacher}"
  if config.init_from:
    _, params = checkpoint.load_params(config.init_from)
    checkpoint.match_params(models.params_for_model(params, program.model),
                            program.state_shapes.params, config.init_from)
    text = f"params and EMA from {config.init_from} (they match config.model)"
    projector_dir = epath.Path(config.init_from) / checkpoint.REPA_PROJECTOR_DIR
    if config.repa.enabled and projector_dir.is_dir():
      checkpoint.match_params(checkpoint.load_params(projector_dir)[1],
                              program.state_shapes.aux_params, projector_dir)
      text += ", REPA projector too"
    return text
  return f"fresh initialisation from seed {config.seed}"


def _first_batch(config, program: train_lib.TrainProgram, batch_spec: dict,
                 encoder=None) -> dict:
  """Reads the input pipeline's first local batch and checks it against the step's spec."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.num_workers = 0  # the same examples; no worker processes for one batch
  started = time.perf_counter()
  iterator = data_lib.create_train_iterator(data_config, global_batch_size=config.batch_size,
                                            seed=config.seed,
                                            **train_lib.data_conditioning(config, encoder))
  batch = next(iterator)
  seconds = time.perf_counter() - started
  skipped = int(batch.pop(data_lib.NUM_SKIPPED_KEY, 0))
  local = config.batch_size // jax.process_count()
  for key in program.batch_keys:
    spec = batch_spec[key]
    want = ((local,) + tuple(spec.shape[1:]), np.dtype(spec.dtype))
    got = (tuple(batch[key].shape), batch[key].dtype) if key in batch else None
    if got != want:
      raise DryRunError(f"the input pipeline gives {key}={got}, the train step expects "
                        f"{want} per process")
  described = ", ".join(f"{k} {tuple(batch[k].shape)} {batch[k].dtype}"
                        for k in program.batch_keys)
  if "label" in program.batch_keys:
    labels = batch["label"]
    if labels.min() < 0 or labels.max() >= config.model.num_classes:
      raise DryRunError(
          f"config.model.num_classes = {config.model.num_classes}: the first batch has label "
          f"{int(labels.max())}; the dataset has more classes than the model. Set "
          "--config.model.num_classes to the number of classes of the data.")
    described += f"; labels {int(labels.min())}..{int(labels.max())}"
  return dict(text=f"{described}; {skipped} unreadable examples skipped; read in "
                   f"{seconds:.1f} s",
              skipped=skipped, shapes={k: batch[k].shape for k in program.batch_keys})


def train(config: ml_collections.ConfigDict, workdir: str, compile_step: bool = False) -> dict:
  """The training dry run; prints the summary and returns it as a dict."""
  started = time.perf_counter()
  validation.validate_config(config, workdir)
  line("config", "valid")
  line("workdir", f"{workdir} (writable)")
  mesh = mesh_lib.create_mesh(config.mesh)
  devices = jax.devices()
  line("devices", f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es); mesh "
        + " ".join(f"{k}={v}" for k, v in mesh.shape.items()))

  # The frozen networks the step takes as an argument, loaded as the run loads them.
  dino_model, encoder, frozen = None, None, {}
  if config.repa.enabled:
    dino_model, frozen["dino"] = repa.load_dino(config)
    line("REPA", f"DINOv2 {models.count_params(frozen['dino']):,} params from "
         f"{config.repa.dino_checkpoint}; aligned after block {config.repa.align_layer}, "
         f"weight {config.repa.weight}")
  if config.model.get("conditioning", "class") == "text":
    # As the run: a stand-in encoder is written to the workdir once, then loaded.
    encoder, frozen["text"] = train_lib.text_encoder_for_run(config, workdir)
    line("text encoder", f"{models.count_params(frozen['text']):,} params "
         f"({config.text_encoder.path or 'stand-in in the workdir'}), "
         f"max_length {config.text_encoder.max_length}")
  frozen = abstract(frozen, mesh_lib.replicated(mesh))
  program = train_lib.build_train_program(config, mesh, dino_model, encoder)
  if program.teacher is not None:
    _, teacher_params, source = teacher_lib.load_teacher(config)
    checkpoint.match_params(models.params_for_model(teacher_params, program.model),
                            program.state_shapes.params, config.meanflow.teacher)
    frozen["teacher"] = abstract(teacher_params, program.teacher_sharding)
    line("MeanFlow teacher", f"{source}: {models.count_params(teacher_params):,} params, "
         f"CFG {config.meanflow.teacher_guidance} on "
         f"({config.meanflow.teacher_guidance_interval_min}, "
         f"{config.meanflow.teacher_guidance_interval_max}); the student starts from it")
  shapes = program.state_shapes
  num_params = models.count_params(shapes.params)
  m = config.model
  line("model", f"{m.get('preset', '?')} {m.dtype}, {num_params:,} params"
        + (f" (+ {models.count_params(shapes.aux_params):,} REPA projector)"
           if shapes.aux_params else "")
        + f"; remat_policy={m.get('remat_policy', 'none')}, "
        f"scan_blocks={m.get('scan_blocks', False)}, "
        f"attention={m.get('attention_implementation') or 'xla'}")
  start = _start(config, workdir, program)
  line("start", start)

  batch_spec = _abstract_batch(config, program)
  first = _first_batch(config, program, batch_spec, encoder)
  line("data", f"{config.data.name} at {config.data.resolution} px, global batch "
        f"{config.batch_size}; first batch on this process: {first['text']}")

  state = abstract(shapes, program.state_sharding)
  with mesh_lib.activate(mesh):
    traced = program.step.trace(state, batch_spec, frozen)
  metrics = sorted(traced.out_info[1])
  line("train step", f"traced on abstract inputs; metrics: {', '.join(metrics)}")

  per_device = {name: bytes_per_device(getattr(shapes, name),
                                       getattr(program.state_sharding, name))
                for name in ("params", "ema_params", "opt_state", "aux_params")}
  state_total = sum(per_device.values())
  batch_bytes = bytes_per_device(batch_spec, program.batch_sharding)
  line("per device", f"train state {_gib(state_total)} (params {_gib(per_device['params'])}, "
        f"EMA {_gib(per_device['ema_params'])}, optimizer {_gib(per_device['opt_state'])}), "
        f"batch {_gib(batch_bytes)}; activations not included"
        + ("" if compile_step else " (--dry_run_compile: XLA's full memory analysis)"))
  memory = None
  if compile_step:
    compile_started = time.perf_counter()
    compiled = traced.lower().compile()
    stats = compiled.memory_analysis()
    if stats is None:
      line("XLA memory", f"this backend ({jax.default_backend()}) gives no memory analysis")
    else:
      memory = dict(arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                    aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                    code=stats.generated_code_size_in_bytes)
      memory["total"] = (memory["arguments"] + memory["outputs"] - memory["aliased"] +
                         memory["temporaries"] + memory["code"])
      line("XLA memory", "per device: " + ", ".join(f"{k} {_gib(v)}" for k, v in memory.items())
            + f" (compiled in {time.perf_counter() - compile_started:.0f} s)")
  line("dry run", f"OK in {time.perf_counter() - started:.1f} s: nothing was trained "
        "or saved. Run the same command without --dry_run to train.")
  return dict(num_params=num_params, mesh=dict(mesh.shape), start=start, metrics=metrics,
              state_bytes_per_device=state_total, batch_shapes=first["shapes"],
              skipped=first["skipped"], memory=memory)


def _abstract_batch(config, program: train_lib.TrainProgram) -> dict:
  """The global batch the trainer feeds the step, as sharded shapes."""
  from pixnerd_jax.training import aot_compile  # pylint: disable=g-import-not-at-top
  return aot_compile.abstract_batch(config, program)
