"""Training: classification loop, resumable state, distributed launch."""
