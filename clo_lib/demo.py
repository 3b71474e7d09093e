"""`make demo`: the kit's default job. Placeholder until the toy grid lands: checks the presets resolve."""
