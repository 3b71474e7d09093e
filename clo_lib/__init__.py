"""CLO kit: Cross-Lingual Optimization (Lee et al., ACL 2025) for moving an English-centric LLM to a new language."""

__version__ = "0.1.0"
