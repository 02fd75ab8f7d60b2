"""Ray Tune sweeps over GRPO knobs: search spaces, the stability-aware objective, and the sweep driver.

``search_spaces`` and ``objective`` are plain data and pure functions (importing them starts nothing);
``sweep_grpo`` runs trials as GRPO runs on Ray Train and records them as nested MLflow runs.
"""
