"""Training: the trainer, optimizer, sharding, checkpoints, configs and metrics."""
