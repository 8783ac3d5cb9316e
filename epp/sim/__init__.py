"""`epp sim`: vLLM-compatible simulated model servers with a GPU engine model.

`cluster.SimCluster` hosts many pods in one process; `main.run` is the command line. The engine
(`engine`, `kvcache`, `profiles`, `stats`) is pure and clock-free; `driver`, `pod`, `server` and
`metrics` put it on the network. See docs/simulator.md for the timing model.
"""
