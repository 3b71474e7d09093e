"""Layer 1: the papers' math, tensors and strings in, never a config: the CLO loss (loss.py), the cross-lingual
pairs (pairs.py), joint translation's compose/split/pack (joint.py), SALT and its baselines (salt.py).
"""
