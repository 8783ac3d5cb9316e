"""The benchmark matrix: ours and the peers on named cells (clusters x workloads x lengths).

`cells.py` defines the cells, `summary.py` judges each against the best peer, `__main__.py`
runs them with `loadtest.bench`'s machinery (`python -m loadtest.matrix`).
"""
