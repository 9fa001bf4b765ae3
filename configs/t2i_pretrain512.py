"""Stage 2 (spec 7.5): 512 px, 400k steps from the 256 model (--config.init_from=DIR).

AdamW 1e-4 (0.9, 0.95), t shifted by 4.0; 24 images per GPU in the reference (the
global batch below assumes 8 hosts' worth, 192).
"""

from configs import t2i_pretrain256


def get_config():
  config = t2i_pretrain256.get_config()
  config.data.resolution = 512
  config.batch_size = 192
  config.num_train_steps = 400_000
  config.optimizer.learning_rate = 1e-4
  config.diffusion.time_shift = 4.0
  config.init_from = ""
  return config
