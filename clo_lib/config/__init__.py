"""Layer 2: run configs: the schema (dataclasses with help text and checks), loading (YAML layers, presets,
overrides, notebook parameters) and the one validation engine.
"""
