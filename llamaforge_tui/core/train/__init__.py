"""A training run: config, setup, the loop, batching, loss, checkpoints, DDP, events and run folders.
May import ``model`` and every layer below it; never ``export``."""
