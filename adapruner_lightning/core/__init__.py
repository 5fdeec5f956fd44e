"""Layer 3: structured pruning of a plain HF causal LM (groups, importance, selection, masks, plans, physical removal)."""
