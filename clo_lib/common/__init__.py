"""Layer 0: what every other layer uses and that knows nothing of the pipeline: languages, language ID, file
helpers and the JSONL cache, user errors, statistics, locks, an OpenAI-compatible client, names resolved lazily.
"""
