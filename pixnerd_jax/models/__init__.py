"""PixNerd networks (Flax linen)."""

from pixnerd_jax.models.pixnerd import PixNerDiT, patchify, unpatchify

__all__ = ["PixNerDiT", "patchify", "unpatchify"]
