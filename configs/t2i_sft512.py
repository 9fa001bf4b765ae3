"""Stage 3 (spec 7.5): supervised fine-tuning at 512 px on BLIP3o-60k, 60k steps.

AdamW 1e-5 (0.9, 0.999), t shifted by 4.0, from the 512 model (--config.init_from=DIR).
Evaluation as the released model is sampled: AdamLM order 2, 25 steps, CFG 4.0,
timeshift 3.0 (the GenEval 0.73 / DPG-Bench 80.9 setting).
"""

from configs import t2i_pretrain512


def get_config():
  config = t2i_pretrain512.get_config()
  config.num_train_steps = 60_000
  config.optimizer.learning_rate = 1e-5
  config.optimizer.b2 = 0.999
  config.sampling.sampler = "adamlm"
  config.sampling.order = 2
  config.sampling.num_steps = 25
  config.sampling.guidance = 4.0
  config.sampling.timeshift = 3.0
  return config
