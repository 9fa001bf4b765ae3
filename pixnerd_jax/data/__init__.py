"""Grain input pipelines for PixNerd training.

Class-labelled (digits, image folder, TFDS) and captioned (digits_captions,
caption_folder, caption_tar, tfds_captions) sources:

    it = create_train_iterator(config.data, global_batch_size=256,
                               tokenizer=encoder if captioned else None)
    local = next(it)   # image, raw_image, label | input_ids, attention_mask,
                       # num_skipped (numpy)
    batch = make_global_batch(local, NamedSharding(mesh, P('data')),
                              keys=batch_keys(config.data))

See `checkpointing` for saving the iterator with Orbax.
"""

from pixnerd_jax.data.batching import NUM_SKIPPED_KEY
from pixnerd_jax.data.checkpointing import iterator_checkpoint_args
from pixnerd_jax.data.errors import DataError
from pixnerd_jax.data.global_batch import BATCH_KEYS
from pixnerd_jax.data.global_batch import CAPTION_BATCH_KEYS
from pixnerd_jax.data.global_batch import make_global_batch
from pixnerd_jax.data.pipeline import batch_keys
from pixnerd_jax.data.pipeline import caption_vocabulary
from pixnerd_jax.data.pipeline import CAPTION_SOURCE_NAMES
from pixnerd_jax.data.pipeline import create_train_iterator
from pixnerd_jax.data.pipeline import is_captioned
from pixnerd_jax.data.pipeline import make_source
