"""Process plumbing shared by every entry point: command-line parsing, the console and
one-line errors, multi-process start, the device mesh, and the CPU malloc and XLA flag
settings."""
