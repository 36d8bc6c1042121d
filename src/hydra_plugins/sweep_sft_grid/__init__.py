"""Hydra sweeper plugin `hydra/sweeper=grid`: Hydra's basic grid, where a failed trial is
recorded and the sweep goes on."""
