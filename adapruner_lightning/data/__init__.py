"""Layer 1: text, models and calibration splits (nothing of evaluation, pruning or Lightning)."""
