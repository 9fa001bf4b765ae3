"""MeanFlow on the embedded digits: 1- and 2-step sampling (diffusion/meanflow.py).

Distilled from the quick start's model (the default; it reads workdirs/digits, whose EMA
weights start the student and whose CFG 4 on (0.1, 1) is trained into it, so sampling
needs no CFG):
  python -m pixnerd_jax.main --config=configs/digits_meanflow.py \\
      --workdir=workdirs/digits_mf_distilled --config.meanflow.teacher=workdirs/digits
From the data alone (no teacher):
  python -m pixnerd_jax.main --config=configs/digits_meanflow.py:scratch \\
      --workdir=workdirs/digits_mf
"""

from configs import digits

MODES = ("distil", "scratch")


def get_config(mode: str | None = None):
  mode = mode or "distil"
  if mode not in MODES:
    raise ValueError(f"configs/digits_meanflow.py:{mode}: unknown mode; use one of {MODES} "
                     "(e.g. --config=configs/digits_meanflow.py:scratch).")
  config = digits.get_config()
  teacher_sampling = config.sampling.copy_and_resolve_references()  # the quick start's CFG
  config.model.average_velocity = True
  mf = config.meanflow
  mf.enabled = True
  mf.time_distribution = "uniform"
  # Distillation (with meanflow.teacher): the teacher's sampling guidance, trained in.
  mf.teacher_guidance = teacher_sampling.guidance
  mf.teacher_guidance_interval_min = teacher_sampling.guidance_interval_min
  mf.teacher_guidance_interval_max = teacher_sampling.guidance_interval_max
  config.optimizer.b2 = 0.95
  config.sampling.sampler = "meanflow"
  config.sampling.num_steps = 1
  config.sampling.guidance = 1.0  # trained in
  config.sampling.extra_eval_num_steps = (2, 4)  # also digits_accuracy_2_steps, _4_steps
  if mode == "scratch":
    # Uniform (t, h) and half the batch at h > 0: few training steps reach the long
    # intervals (t near 0, h near 1) that 1-step sampling uses; MeanFlow's ImageNet
    # recipe (logit-normal, 75% at h = 0) is the default in configs/default.py.
    mf.equal_fraction = 0.5
    # MeanFlow's CFG-in-target (omega, kappa) on the whole time range.
    mf.omega = 2.0
    mf.kappa = 0.5
    return config
  mf.teacher = "workdirs/digits"
  # A short fine-tune of a student that already knows h = 0 (the teacher's velocity):
  # most of the batch on the sampler's 1/2/4-step grids, the grid steps themselves (30%)
  # and intervals ending on them (40%); 1/8 of the batch regresses the teacher's own
  # trajectory over a grid step (4 Heun steps), the rest the JVP target.
  mf.equal_fraction = 0.1
  mf.grid_fraction = 0.3
  mf.grid_end_fraction = 0.4
  mf.teacher_ode_fraction = 0.125
  mf.teacher_ode_steps = 4
  config.diffusion.label_dropout = 0.0  # sampling never asks for the unconditional
  config.num_train_steps = 1000
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 50
  return config
