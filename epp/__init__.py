"""epp: an Envoy ext_proc endpoint picker for LLM inference pools, and the gateway around it."""

__version__ = "0.1.0"
