"""Layer 4: the Bayesian search over the pruning solution space; knows nothing of Lightning."""
