"""Layer 5: one module per pipeline stage, each behind one notebook and one `clo` command: sources and translate
(01), transfer (05), train (02), evaluate with generate/scores/mtbench (03), and the report with results, claims
and figures (04). Stages meet through files (clo_lib.artifacts), never by importing each other's entry points.
"""
