"""Official checkpoints (PixNerd, DINOv2) to Flax params."""
