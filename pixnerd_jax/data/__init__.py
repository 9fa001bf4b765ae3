"""Grain input pipelines for PixNerd training (digits, image folder, TFDS).

    it = create_train_iterator(config.data, global_batch_size=256)
    local = next(it)   # image, raw_image, label, num_skipped (numpy)
    batch = make_global_batch(local, NamedSharding(mesh, P('data')))

See `checkpointing` for saving the iterator with Orbax.
"""

from pixnerd_jax.data.batching import NUM_SKIPPED_KEY
from pixnerd_jax.data.checkpointing import iterator_checkpoint_args
from pixnerd_jax.data.global_batch import BATCH_KEYS
from pixnerd_jax.data.global_batch import make_global_batch
from pixnerd_jax.data.pipeline import create_train_iterator
from pixnerd_jax.data.pipeline import make_source
