"""Running studies: the Optuna queue of grid points (queue, grid), one trial's objective
(objective), the worker loop and study runs (run, workers), storages and their repair (storage),
the MLflow store side of a study (mlflow_store), the GAN cache shared between machines
(shared_cache) and read-only status (status). With cli.py, the only package that imports optuna;
the experiment (the rest of ganft) never imports it.

Importing this package imports nothing else: ``ganft study status`` loads only what it reads.
"""
