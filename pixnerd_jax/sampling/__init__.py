"""Sampling trained models: class-conditional sample sets for FID, text-to-image prompts
at any size, and the GenEval and DPG-Bench output layouts."""
