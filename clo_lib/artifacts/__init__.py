"""Layer 3: the files stages meet through: the parallel corpus, a run's metrics.json, and the fingerprints that
say what made each output.
"""
