"""Our Optuna 5 sweeper for Hydra: hydra/sweeper=optuna5."""
