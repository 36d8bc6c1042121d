"""Hydra launcher plugin `hydra/launcher=sweep_sft_slurm|sweep_sft_local` (and the profiles in
sweep_sft/conf/hydra/launcher/ built on them): submitit jobs whose death by Slurm becomes a
failed trial, after `retries` resubmissions, instead of ending the sweep."""
