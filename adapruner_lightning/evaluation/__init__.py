"""Layer 2: evaluation of any causal LM (metrics, log-likelihood scoring, tasks); knows nothing of pruning."""
