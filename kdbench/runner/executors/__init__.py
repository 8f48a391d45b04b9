"""Executors: where a run's cells execute (local, Ray, Slurm through submitit)."""
