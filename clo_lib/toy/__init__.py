"""The toy world (the edge of the kit): a small synthetic world in seven languages, its tiny base model, donor and
exact translator. Nothing in the pipeline imports it; the `toy` translator and data source are reached by name.
"""
