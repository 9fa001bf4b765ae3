"""pixnerd-jax: a JAX/Flax trainer for PixNerd (pixel neural field diffusion)."""
