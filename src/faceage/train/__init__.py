"""Training engine: config, loop, checkpoints, EMA, DDP. Inference never imports this package."""
