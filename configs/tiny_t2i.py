"""A seconds-long text-to-image run for tests: tiny model, captioned digits at 16 px."""

from configs import default
from configs import models


def get_config():
  config = default.get_config()
  config.model = models.get("tiny_t2i", txt_embed_dim=32, txt_max_length=16)
  config.data.name = "digits_captions"
  config.data.resolution = 16
  config.text_encoder.stand_in = True
  config.text_encoder.stand_in_layers = 1
  config.text_encoder.dtype = "float32"
  config.text_encoder.max_length = 16
  config.batch_size = 8
  config.num_train_steps = 6
  config.optimizer.learning_rate = 1e-3
  config.log_every = 2
  config.checkpoint_every = 2
  config.sample_every = 0
  config.eval_every = 0
  config.final_eval_num_samples = 0
  config.sampling.num_steps = 4
  return config
