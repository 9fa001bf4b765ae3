"""Configs are plain Python files with get_config(); this package lets them share presets."""
