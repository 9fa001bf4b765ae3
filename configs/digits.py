"""The embedded default: a small PixNerd on sklearn's handwritten digits, 32x32 RGB.

Trains on a 2-core CPU in under 15 minutes to class-conditional samples that a digit
classifier labels correctly >= 90% of the time. The decoder width (hidden_size_x 16) is
smaller than ImageNet's 64: on CPU the per-patch field MLPs dominate the step time.
"""

from configs import default
from configs import models


def get_config():
  config = default.get_config()
  config.model = models.get(
      "S/8", hidden_size=128, num_groups=4, hidden_size_x=16, num_blocks=6,
      num_cond_blocks=4, num_classes=10)
  config.data.name = "digits"
  config.data.resolution = 32
  config.batch_size = 64
  config.num_train_steps = 3000
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.ema_decay = 0.999
  config.ema_warmup = 10
  config.log_every = 100
  config.checkpoint_every = 500
  config.sample_every = 1000
  config.eval_every = 1000
  config.final_eval_num_samples = 500
  # Stronger guidance than ImageNet's 3.5 on (0.1, 1): at 3,000 steps it lifts the judge's
  # accuracy from ~90% (CFG 2) to ~97% (measured on one run).
  config.sampling.guidance = 4.0
  return config
