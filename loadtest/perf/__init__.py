"""inference-perf beside our benchmark (`python -m loadtest.perf`, `make inference-perf`).

inference-perf (kubernetes-sigs, PyPI) is the benchmark llm-d's guides publish numbers with.
`environment.py` makes its own Python >= 3.12 virtual environment with the pinned release and a
tokenizer built locally (`tokenizer.py`, nothing from a model hub); `guide.py` writes its
config for llm-d's guide workload shape (shared-prefix groups, a Poisson rate ladder) scaled to
the simulator; `metrics.py` reads its reports and computes our own definitions from its
per-request records; `__main__.py` runs it against each router on a fresh simulated cluster
(loadtest.bench's stacks: Envoy + EPP as `epp up` runs them, Envoy alone, the peers).
"""
