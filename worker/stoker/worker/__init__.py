"""Worker runtime: trainer, checkpoints, operator SDK."""
