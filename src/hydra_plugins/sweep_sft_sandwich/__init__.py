"""Hydra sweeper plugin `hydra/sweeper=sandwich` (sweep_sft's constraint bisection)."""
