"""Layer 6: grids of runs: a grid file checked and expanded into stages (spec), their states (state), and running
them locally, with submitit or on SLURM (run).
"""
