"""The side-by-side benchmark (`python -m loadtest.bench`): ours, Envoy, vllm-router, sglang-router.

`routers.py` starts the simulated cluster and each router as child processes, `client.py`
generates the load and records samples, `stats.py` computes the numbers and `report.py`
writes the markdown, JSON and plots; `__main__.py` runs it all.
"""
