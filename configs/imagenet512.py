"""PixNerd-XL/16 fine-tuned at 512 px from a 256 checkpoint (the released 512 model).

The model is unchanged (RoPE positions are resolution-normalised). The reference ran
200k steps; its 512 batch size is not in the official repo (~32 inferred from the
checkpoint's step/epoch counters), so we keep 256 and the lr of the 256 run.
Set --config.init_from=DIR to a params checkpoint (a converted official 256 model or
one of ours).
"""

from configs import imagenet256


def get_config():
  config = imagenet256.get_config()
  config.data.resolution = 512
  config.num_train_steps = 200_000
  config.init_from = ""
  return config
