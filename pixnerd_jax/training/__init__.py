"""Training: the train state and pure step, the loop, checkpoints, REPA, config
validation, dry runs, ahead-of-time compiles, and what the trainer evaluates."""
