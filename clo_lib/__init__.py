"""CLO kit: Cross-Lingual Optimization (Lee et al., ACL 2025) for moving an English-centric LLM to a new language.

The package is cut into layers in pipeline order (docs/layout.md): common, method (the papers' math), config,
artifacts, modeling and mt, stages, grid, and at the edge the toy world and the `clo` command (clo_lib.cli).
"""

__version__ = "0.1.0"
