"""Running studies: the study schema and its loader (schema), the Optuna queue of grid points
(queue, grid), one trial's objective (objective), the worker loop and study runs (run, workers),
searches and their confirmation (search, confirm), pretraining a study's sources (pretrain),
storages and their repair (storage), the MLflow store side of a study and its tracker
(mlflow_store), the checkpoint store shared between machines (shared_cache) and read-only status
(status). With cli.py, the only package that imports optuna;
the experiment (the rest of ganft) never imports it.

Importing this package imports nothing else: ``ganft study status`` loads only what it reads.
"""
