"""The embedded text-to-image job: a small PixNerd drawing digits from captions.

scikit-learn's handwritten digits with captions written from templates ("a handwritten
seven", "the digit 7", ...); evaluation samples captions from templates held out of
training and asks the digits judge which digit came out. The text encoder is a stand-in
so the job runs offline: a 2-layer Qwen3-architecture network with fixed random weights
and a word-level tokenizer built from the training captions' vocabulary at start (saved
to <workdir>/text_encoder; words of a single training template, and unseen words, are
[UNK]). The code path is the real one; only the weights differ.
"""

from configs import default
from configs import models


def get_config():
  config = default.get_config()
  config.model = models.get(
      "tiny_t2i", patch_size=8, hidden_size=128, num_groups=4, hidden_size_x=16,
      num_blocks=6, num_cond_blocks=4, txt_embed_dim=64, txt_max_length=16,
      num_text_blocks=1)
  config.data.name = "digits_captions"
  config.data.resolution = 32
  config.text_encoder.stand_in = True
  config.text_encoder.stand_in_layers = 2
  # Below HF's 0.02 so random attention mixes less of a word's neighbours into it.
  config.text_encoder.stand_in_init_std = 0.005
  config.text_encoder.dtype = "float32"
  config.text_encoder.max_length = 16
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
  config.eval_num_samples = 200
  config.final_eval_num_samples = 500
  config.grid_classes = 10
  config.sampling.guidance = 4.0
  return config
