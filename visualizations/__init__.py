"""Figures from logs/ (plots.py) and the notebooks that call it (viz.ipynb, compare_runs.ipynb)."""
