"""The I/O edge that listens to every pod's vLLM KV events and keeps `epp.kvcache`'s index."""
