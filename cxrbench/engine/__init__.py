"""The one training engine: device and precision, batches from the image cache, DDP, checkpoints
that resume bitwise, schedules, the per-step log, and the loop every training stage runs on."""
