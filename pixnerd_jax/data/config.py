"""Default `config.data` block."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the data config with its defaults (the embedded digits job)."""
  config = ml_collections.ConfigDict()
  # 'digits' (embedded sklearn digits), 'tfds' or 'folder'.
  config.name = 'digits'
  config.tfds_name = 'imagenet2012'
  # TFDS data dir; None means ~/tensorflow_datasets.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.split = 'train'
  # Root of root/<class>/*.{jpg,jpeg,png,webp}.
  config.folder = ''
  # Square side S of the training images.
  config.resolution = 32
  # The reference trains without flips.
  config.random_flip = False
  # Grain worker processes; 0 decodes in the training process.
  config.num_workers = 0
  # Batches read ahead: the decoding threads of each worker (or of the
  # training process when num_workers == 0) run this many local batches
  # ahead, and each worker keeps this many finished batches ready.
  config.prefetch_buffer_size = 2
  # Decoding threads per worker (PIL releases the GIL while decoding).
  config.num_threads = 8
  config.seed = 0
  config.shuffle = True
  return config
