"""Layer 4: translation as a library: model families and language codes, segmentation, the backends (a registry),
the cache, quality flags, and translating records separately or jointly.
"""
