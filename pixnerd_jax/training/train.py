"""Training: state, the pure train step, and the loop (checkpoints, metrics, samples).

The per-step randomness is fold_in(seed, step), and the data iterator state is saved
with every checkpoint, so a run restarted from any checkpoint replays exactly the
same steps as an uninterrupted one.
"""

import contextlib
import dataclasses
import functools
import signal
import time
from typing import Any, Callable

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pixnerd_jax import data as data_lib
from pixnerd_jax import models
from pixnerd_jax.diffusion import objective
from pixnerd_jax.embedded import stand_in_text_encoder
from pixnerd_jax.models import PixNerDiT, build_model, count_params
from pixnerd_jax.models import text_encoder as text_encoder_lib
from pixnerd_jax.runtime import host_malloc
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import flops as flops_lib
from pixnerd_jax.training import meanflow_step
from pixnerd_jax.training import profiling
from pixnerd_jax.training import progress
from pixnerd_jax.training import repa
from pixnerd_jax.training import run_record
from pixnerd_jax.training import teacher as teacher_lib
from pixnerd_jax.training import validation
from pixnerd_jax.training.evaluator import TrainingEvaluator


@flax.struct.dataclass
class TrainState:
  """step; the model's params and their EMA; aux_params (trained with the model but not
  part of it: the REPA projector, {} without REPA); the optimizer state of both."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  aux_params: Any = flax.struct.field(default_factory=dict)


def create_model(config: ml_collections.ConfigDict) -> PixNerDiT:
  features_after = config.repa.align_layer if config.repa.enabled else None
  return build_model(config.model, features_after_block=features_after)


def uses_teacher(config: ml_collections.ConfigDict) -> bool:
  """MeanFlow distillation: config.meanflow.teacher names a frozen flow-matching model."""
  return bool(config.meanflow.enabled and config.meanflow.teacher)


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int):
  """Linear warmup, then constant or cosine decay to min_lr_ratio * learning_rate."""
  lr = opt.learning_rate
  if opt.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(
        lr, max(num_train_steps - opt.warmup_steps, 1), alpha=opt.min_lr_ratio)
  else:
    raise ValueError(f"config.optimizer.schedule must be 'constant' or 'cosine', got "
                     f"{opt.schedule!r}.")
  if opt.warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, opt.warmup_steps)
  return optax.join_schedules([warmup, main], [opt.warmup_steps])


def create_optimizer(config: ml_collections.ConfigDict):
  """AdamW (+ optional global-norm clipping) and its learning-rate schedule."""
  opt = config.optimizer
  schedule = learning_rate_schedule(opt, config.num_train_steps)
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                      weight_decay=opt.weight_decay)
  if opt.grad_clip_norm and opt.grad_clip_norm > 0:
    return _clipped(adamw, opt.grad_clip_norm), schedule
  return adamw, schedule


def _clipped(tx: optax.GradientTransformation, max_norm: float):
  """`tx` applied to gradients clipped to global norm `max_norm`, with exactly `tx`'s
  state: turning clipping on or off keeps the checkpoint's optimizer state, so a run
  restarts with it (optax.chain would add a state entry)."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(grads, state, params=None):
    clipped, _ = clip.update(grads, clip.init(grads), params)
    return tx.update(clipped, state, params)

  return optax.GradientTransformation(tx.init, update)


def init_params(model: PixNerDiT, seed: int):
  return models.init_params(model, jax.random.key(seed))


def create_train_state(params, tx, aux_params=None) -> TrainState:
  to_f32 = lambda tree: jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), tree)
  params, aux_params = to_f32(params), to_f32(aux_params or {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init((params, aux_params)), aux_params=aux_params)


def ema_decay_at(step, decay: float, warmup: int):
  """The EMA decay used after `step` updates (warmup > 0 averages less early on)."""
  if warmup <= 0:
    return jnp.float32(decay)
  step = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (warmup + step))


def step_rng(seed: int, step):
  """The key of one step: the same step always draws the same noise."""
  return jax.random.fold_in(jax.random.key(seed), step)


def text_condition(rng, batch: dict, text_params, *, text_encoder, empty_prompt: dict,
                   dropout: float, return_dropped: bool = False):
  """Caption dropout, then the frozen encoder: (B, T, E) text features for the model.

  A dropped caption becomes the empty prompt's tokens before encoding, which gives
  exactly the unconditional features (encoding is per row), with one encoder call.
  Args:
    batch: 'input_ids', 'attention_mask' (B, T) int32.
    empty_prompt: the tokenized "" ('input_ids', 'attention_mask' (1, T)).
    return_dropped: also return which captions were dropped, (B,) bool.
  """
  ids, mask = batch["input_ids"], batch["attention_mask"]
  drop = jax.random.uniform(rng, (ids.shape[0], 1)) < dropout
  ids = jnp.where(drop, jnp.asarray(empty_prompt["input_ids"], ids.dtype), ids)
  mask = jnp.where(drop, jnp.asarray(empty_prompt["attention_mask"], mask.dtype), mask)
  features = text_encoder.encode(text_params, ids, mask)
  return (features, drop[:, 0]) if return_dropped else features


def _meanflow_loss_fn(rng, state, batch, frozen_params, *, model, config, text_encoder,
                      empty_prompt, teacher):
  """The MeanFlow loss_fn of this batch: conditions after dropout, then the objective."""
  if text_encoder is not None:
    condition, dropped = text_condition(
        jax.random.fold_in(rng, 2), batch, frozen_params["text"], text_encoder=text_encoder,
        empty_prompt=empty_prompt, dropout=config.text_encoder.caption_dropout,
        return_dropped=True)
    null = text_encoder.encode(frozen_params["text"], empty_prompt["input_ids"],
                               empty_prompt["attention_mask"])
  else:
    null = model.num_classes
    condition = objective.drop_labels(jax.random.fold_in(rng, 2), batch["label"],
                                      probability=config.diffusion.label_dropout,
                                      null_class=null)
    dropped = condition == null
  return meanflow_step.make_loss_fn(
      rng, state.params, batch["image"], condition, dropped, null, model=model, config=config,
      teacher=teacher, teacher_params=frozen_params.get("teacher"))


def train_step(state: TrainState, batch: dict, frozen_params=None, *, model: PixNerDiT, tx,
               schedule, config: ml_collections.ConfigDict,
               make_aux_loss: Callable | None = None, text_encoder=None,
               empty_prompt: dict | None = None,
               teacher: PixNerDiT | None = None) -> tuple[TrainState, dict]:
  """One optimizer update; pure, meant to be jitted with the state donated.

  Args:
    state: the TrainState.
    batch: 'image' (B, H, W, C) in [-1, 1]; 'label' (B,) for the class model or
      'input_ids', 'attention_mask' (B, T) for the text model; whatever the aux loss needs.
    frozen_params: {'dino': REPA's DINOv2 params, 'text': the text encoder's, 'teacher':
      MeanFlow distillation's teacher}, each only when used; passed as an argument so they
      are not baked into the compiled program as constants.
    make_aux_loss: optional, dino params -> aux_loss_fn(aux_params, features (B, L, D),
      batch, rng) -> (loss, metrics dict), given the trunk features after block
      config.repa.align_layer (REPA); aux_params are trained with the model.
    text_encoder: the frozen text encoder (text model only); empty_prompt: its tokens
      of "" (the unconditional input that caption dropout substitutes).
    teacher: MeanFlow distillation's frozen flow-matching model (config.meanflow).
  Returns:
    (new state, metrics: loss, fm_loss, grad_norm, learning_rate, ...).
  """
  frozen_params = frozen_params or {}
  rng = step_rng(config.seed, state.step)
  rng_fm, rng_aux = jax.random.split(rng)
  diff = config.diffusion
  if config.meanflow.enabled:
    loss_fn = _meanflow_loss_fn(rng_fm, state, batch, frozen_params, model=model,
                                config=config, text_encoder=text_encoder,
                                empty_prompt=empty_prompt, teacher=teacher)
    return _apply_gradients(state, loss_fn, tx=tx, schedule=schedule, config=config)
  if text_encoder is not None:
    condition = text_condition(jax.random.fold_in(rng, 2), batch, frozen_params["text"],
                               text_encoder=text_encoder, empty_prompt=empty_prompt,
                               dropout=config.text_encoder.caption_dropout)
    x_t, t, y, target = objective.flow_matching_inputs(
        rng_fm, batch["image"], condition, null_class=None, label_dropout=0.0,
        time_distribution=diff.time_distribution, time_mean=diff.time_mean,
        time_std=diff.time_std, time_shift=diff.time_shift)
  else:
    x_t, t, y, target = objective.flow_matching_inputs(
        rng_fm, batch["image"], batch["label"], null_class=model.num_classes,
        label_dropout=diff.label_dropout, time_distribution=diff.time_distribution,
        time_mean=diff.time_mean, time_std=diff.time_std, time_shift=diff.time_shift)

  aux_loss_fn = make_aux_loss(frozen_params.get("dino")) if make_aux_loss else None

  def loss_fn(trainable):
    params, aux_params = trainable
    if aux_loss_fn is None:
      prediction = model.apply({"params": params}, x_t, t, y)
      fm_loss = objective.velocity_loss(prediction, target)
      return fm_loss, {"fm_loss": fm_loss}
    prediction, inter = model.apply({"params": params}, x_t, t, y, mutable=["intermediates"])
    fm_loss = objective.velocity_loss(prediction, target)
    (features,) = inter["intermediates"]["trunk_features"]
    aux_loss, aux_metrics = aux_loss_fn(aux_params, features, batch, rng_aux)
    return fm_loss + aux_loss, {"fm_loss": fm_loss, **aux_metrics}

  return _apply_gradients(state, loss_fn, tx=tx, schedule=schedule, config=config)


def _apply_gradients(state: TrainState, loss_fn, *, tx, schedule, config):
  """The optimizer and EMA update from loss_fn(trainable) -> (loss, metrics)."""
  trainable = (state.params, state.aux_params)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  params, aux_params = optax.apply_updates(trainable, updates)
  decay = ema_decay_at(state.step, config.ema_decay, config.ema_warmup)
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params,
                            params)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state, aux_params=aux_params)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 learning_rate=schedule(state.step))
  return new_state, metrics


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """The jitted train step and everything needed to feed it on one mesh.

  Built once by `build_train_program`, used by the training loop and by aot_compile, so the
  program compiled ahead of time for a TPU slice is the one the pod runs.
  Attributes:
    make_state: () -> a fresh TrainState; jit it with out_shardings=state_sharding.
    state_shapes: the TrainState as ShapeDtypeStructs.
    batch_keys: the batch entries the step reads ('raw_image' only with REPA; token ids
      and mask instead of labels for the text model).
    step: jitted (state, batch, frozen_params) -> (state, metrics); the state is donated;
      frozen_params is {'dino': ..., 'text': ..., 'teacher': ...} with the entries the
      config uses.
    teacher: MeanFlow distillation's teacher model, else None; teacher_sharding: its
      params' shardings (the student's layout: FSDP shards it like the student).
  """
  model: PixNerDiT
  tx: optax.GradientTransformation
  schedule: Callable
  mesh: jax.sharding.Mesh
  make_state: Callable[[], TrainState]
  state_shapes: TrainState
  state_sharding: Any
  batch_sharding: jax.sharding.NamedSharding
  batch_keys: tuple[str, ...]
  step: Callable
  teacher: PixNerDiT | None = None
  teacher_sharding: Any = None


def data_conditioning(config: ml_collections.ConfigDict, text_encoder=None) -> dict:
  """create_train_iterator's conditioning arguments: the text model's tokenizer, or the
  class model's class count (a source with more classes is refused when built)."""
  if text_encoder is not None:
    return {"tokenizer": text_encoder}
  return {"num_classes": int(config.model.num_classes)}


def text_encoder_for_run(config: ml_collections.ConfigDict, workdir: str):
  """(encoder, params) of a text-to-image run, loaded as sampling will load them: from
  config.text_encoder.path, or from the stand-in this run writes to its workdir."""
  if config.text_encoder.stand_in and not config.text_encoder.path:
    stand_in_text_encoder.write_for_run(config, workdir)
  return text_encoder_lib.load_for_run(config.text_encoder, config.model.txt_embed_dim,
                                       workdir)


def build_train_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                        dino_model=None, text_encoder=None) -> TrainProgram:
  """Model, optimizer, state shardings and the jitted step for `config` on `mesh`.

  With REPA, `dino_model` is the frozen DinoV2 module; for the text model `text_encoder`
  is the frozen text_encoder.TextEncoder. Their params are the step's third argument,
  {'dino': ..., 'text': ...} (arrays when training, ShapeDtypeStructs when compiling
  ahead of time).
  """
  model = create_model(config)
  text_model = model.conditioning == "text"
  if text_model and text_encoder is None:
    raise ValueError("A text-conditioned model needs the frozen text encoder (text_encoder).")
  tx, schedule = create_optimizer(config)
  make_aux_loss, make_aux_params = None, dict
  if config.repa.enabled:
    if dino_model is None:
      raise ValueError("config.repa.enabled needs the frozen DINOv2 module (dino_model).")
    projector = repa.Projector(out_size=dino_model.hidden_size)
    make_aux_loss = functools.partial(repa.make_aux_loss_fn, dino_model, projector=projector,
                                      weight=config.repa.weight,
                                      patch_size=config.model.patch_size)
    make_aux_params = lambda: repa.init_projector(
        projector, jax.random.key(config.seed + 1), config.model.hidden_size)
  make_state = lambda: create_train_state(init_params(model, config.seed), tx,
                                          make_aux_params())
  params_sharding = mesh_lib.param_shardings(models.boxed_param_shapes(model), mesh)
  state_shapes = jax.eval_shape(make_state)
  state_sharding = mesh_lib.state_shardings(state_shapes, params_sharding, tx, mesh)
  text_kw = {}
  if text_model:
    text_kw = dict(text_encoder=text_encoder, empty_prompt=text_encoder.tokenize([""]))
  teacher, teacher_sharding = None, None
  if uses_teacher(config):
    teacher = teacher_lib.build_teacher(config)
    teacher_sharding = mesh_lib.param_shardings(models.boxed_param_shapes(teacher), mesh)
  step = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                        make_aux_loss=make_aux_loss, teacher=teacher, **text_kw),
      donate_argnums=0, out_shardings=(state_sharding, mesh_lib.replicated(mesh)))
  condition_keys = ("input_ids", "attention_mask") if text_model else ("label",)
  batch_keys = ("image",) + (("raw_image",) if config.repa.enabled else ()) + condition_keys
  return TrainProgram(model=model, tx=tx, schedule=schedule, mesh=mesh, make_state=make_state,
                      state_shapes=state_shapes, state_sharding=state_sharding,
                      batch_sharding=mesh_lib.batch_sharding(mesh), batch_keys=batch_keys,
                      step=step, teacher=teacher, teacher_sharding=teacher_sharding)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks once per step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def _first_nonfinite(pending: list[tuple[int, Any]]):
  """Steps and loss arrays since the last check -> the first step whose loss is not finite."""
  for step, loss in pending:
    if not np.isfinite(np.asarray(loss)):
      return step
  return None


class NonFiniteLossError(FloatingPointError):
  pass


@contextlib.contextmanager
def _closed_on_error(manager):
  """On an error in the loop, lets the checkpoint writes in flight finish (or fail)
  quietly: the error raised says what went wrong."""
  try:
    yield
  except BaseException:
    try:
      manager.close()
    except Exception as e:  # pylint: disable=broad-except  # the save that failed, again
      logging.debug("Closing the checkpoint manager after an error: %s", e)
    raise


def sum_over_processes(value: int) -> int:
  """The sum of an int over all processes (each counts its own share of the data); a
  collective: all processes call it at the same steps."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.sum(multihost_utils.process_allgather(np.int64(value))))


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) in `workdir`; returns the final state."""
  # clu's writers import TensorFlow (~8 s); only the loop needs them, not train_step users.
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  run_start = time.perf_counter()
  validation.validate_config(config, workdir)
  is_chief = jax.process_index() == 0
  writer = run_record.create_writer(workdir, is_chief)
  logging.debug("Config:\n%s", config)

  mesh = mesh_lib.create_mesh(config.mesh)
  logging.debug("Mesh: %s", dict(mesh.shape))
  dino_model, text_encoder, frozen_params = None, None, {}
  if config.repa.enabled:
    dino_model, frozen_params["dino"] = repa.load_dino(config)
  if config.model.conditioning == "text":
    text_encoder, frozen_params["text"] = text_encoder_for_run(config, workdir)
  frozen_params = jax.device_put(frozen_params, mesh_lib.replicated(mesh))
  program = build_train_program(config, mesh, dino_model, text_encoder)
  teacher_params = None
  if program.teacher is not None:
    _, teacher_params, teacher_source = teacher_lib.load_teacher(config)
    progress.say(f"MeanFlow teacher: {teacher_source}")
    frozen_params["teacher"] = jax.device_put(teacher_params, program.teacher_sharding)
  state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
  overview = parameter_overview.get_parameter_overview(state.params)
  logging.debug("Parameters:\n%s", overview)

  train_iter = data_lib.create_train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      sharding=program.batch_sharding, **data_conditioning(config, text_encoder))
  manager = checkpoint.create_manager(workdir, config)
  restored_step, state, train_iter = checkpoint.restore_latest(manager, state, train_iter)
  if restored_step is not None:
    progress.say(f"Resumed from the checkpoint of step {restored_step}.")
  elif teacher_params is not None:
    # The student starts as the teacher (its interval embedder's output at zero), in
    # buffers of its own: the step donates the state, never the teacher.
    params = checkpoint.match_params(models.params_for_model(teacher_params, program.model),
                                     state.params, config.meanflow.teacher)
    params = jax.tree.map(jnp.copy, params)
    state = jax.device_put(create_train_state(params, program.tx), program.state_sharding)
    progress.say("Initialised the student (params and EMA) from the teacher.")
  elif config.init_from:
    _, params = checkpoint.load_params(config.init_from)
    params = checkpoint.match_params(models.params_for_model(params, program.model),
                                     state.params, config.init_from)
    aux_params = state.aux_params
    projector_dir = epath.Path(config.init_from) / checkpoint.REPA_PROJECTOR_DIR
    if config.repa.enabled and projector_dir.is_dir():
      aux_params = checkpoint.match_params(checkpoint.load_params(projector_dir)[1],
                                           aux_params, projector_dir)
    state = jax.device_put(create_train_state(params, program.tx, aux_params),
                           program.state_sharding)
    progress.say(f"Initialised params and EMA from {config.init_from}.")
  initial_step = int(state.step)
  if is_chief:
    run_record.write_run_files(workdir, config, overview)
  if initial_step == 0:
    writer.write_hparams(validation.flat_hparams(config))

  evaluator = TrainingEvaluator(config, program.model, workdir, writer, mesh,
                                text=(text_encoder, frozen_params.get("text")))

  profile = profiling.ProfileWindow(config.get("profile"), workdir)
  step_flops = None
  progress.say(run_record.start_line(config, workdir, count_params(state.params),
                                     mesh, initial_step))
  timing = progress.Progress(evaluations_of(config, evaluator), config.batch_size,
                             initial_step)
  history, pending_losses, skipped = [], [], 0
  data_wait, log_start, log_step = 0.0, time.perf_counter(), initial_step
  step = initial_step
  with _Preemption() as preemption, mesh_lib.activate(mesh), _closed_on_error(manager):
    for step in range(initial_step + 1, config.num_train_steps + 1):
      wait_start = time.perf_counter()
      local_batch = next(train_iter)
      data_wait += time.perf_counter() - wait_start
      skipped += int(local_batch.pop(data_lib.NUM_SKIPPED_KEY, 0))
      batch = data_lib.make_global_batch(local_batch, program.batch_sharding,
                                         keys=program.batch_keys)
      profile.before_step(step)
      state, metrics = program.step(state, batch, frozen_params)
      profile.after_step(step, metrics)
      if step == initial_step + 1:
        # The compile is done: hand back what it left free (a no-op off the CPU backend).
        host_malloc.release_free_memory()
        step_flops = flops_lib.for_train_step(program, config, state, batch, frozen_params)
        progress.say(step_flops.describe())
        if step < config.num_train_steps and step % config.log_every:
          jax.block_until_ready(metrics)
          timing.restart(step)  # the console's speed leaves the compile out
      history.append(metrics)
      pending_losses.append((step, metrics["loss"]))

      last = step == config.num_train_steps
      stopping = preemption.requested or manager.reached_preemption(step)
      if step % config.log_every == 0 or last or stopping:
        _check_finite(pending_losses, manager)
        scalars = _mean_metrics(history)
        elapsed = time.perf_counter() - log_start
        speed = timing.interval(step)
        scalars.update({
            "images_per_sec": config.batch_size * (step - log_step) / elapsed,
            "training_images_per_sec": speed["train_images_per_sec"],
            "data_wait_fraction": data_wait / elapsed,
            "skipped_examples": float(sum_over_processes(skipped)),
            **step_flops.tflops_and_mfu((step - log_step) / elapsed),
        })
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        # As clu's ReportProgress wrote them (all wall time, evaluations included).
        writer.write_scalars(step, {"steps_per_sec": speed["steps_per_sec"],
                                    "uptime": time.perf_counter() - run_start})
        progress.say(progress.progress_line(
            step, config.num_train_steps, scalars, speed["train_steps_per_sec"],
            speed["train_images_per_sec"], timing.eta(step)))
        history, data_wait, log_start, log_step = [], 0.0, time.perf_counter(), step
      if step % config.checkpoint_every == 0 or last or stopping:
        _check_finite(pending_losses, manager)
        checkpoint.save(manager, step, state, train_iter)
      if stopping:
        logging.warning("Stopped at step %d for preemption; restart to resume.", step)
        break
      if config.sample_every and (step % config.sample_every == 0 or last):
        jax.block_until_ready(state.ema_params)  # the steps queued count as training
        with timing.sampling("grid", evaluator.grid_size()):
          evaluator.write_sample_grid(step, state.ema_params)
      if config.eval_every and step % config.eval_every == 0 and not last:
        jax.block_until_ready(state.ema_params)
        with timing.sampling("eval", config.eval_num_samples):
          evaluator.evaluate(step, state.ema_params, config.eval_num_samples)

  profile.stop()
  checkpoint.wait_until_saved(manager, step)
  if step == config.num_train_steps and not preemption.requested:
    if config.final_eval_num_samples:
      evaluator.evaluate(step, state.ema_params, config.final_eval_num_samples, final=True)
    path = evaluator.save_final_grid(state.ema_params)
    if path:
      progress.say(f"Wrote the final sample grid to {path}")
  writer.flush()
  manager.close()
  return state


def evaluations_of(config: ml_collections.ConfigDict, evaluator) -> progress.Evaluations:
  return progress.Evaluations(
      total_steps=config.num_train_steps, sample_every=config.sample_every,
      eval_every=config.eval_every, grid_samples=evaluator.grid_size(),
      eval_samples=config.eval_num_samples if evaluator.has_metrics() else 0,
      final_eval_samples=config.final_eval_num_samples if evaluator.has_metrics() else 0)


def _check_finite(pending: list, manager) -> None:
  bad = _first_nonfinite(pending)
  pending.clear()
  if bad is not None:
    checkpoint.wait_until_saved(manager)
    last_good = manager.latest_step()
    raise NonFiniteLossError(
        f"Non-finite loss at step {bad}; training stopped. The last good checkpoint is "
        f"step {last_good} (nothing was saved after the loss diverged). Lower "
        "config.optimizer.learning_rate or set config.optimizer.grad_clip_norm, then "
        "restart to resume from it.")
