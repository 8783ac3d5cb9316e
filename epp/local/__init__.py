"""`epp up`: the whole gateway on one machine, no cluster and no GPU.

`processes.py` starts and stops child programs, `envoy.py` renders and runs Envoy, `stack.py`
puts simulated pods, the EPP and Envoy together from a folder of manifests.
"""
