"""What the pods really cache, as their vLLM KV events tell it: hashing, wire format, index.

`hashing` computes vLLM's block hashes from token ids, `wire` decodes the event batches vLLM
publishes, `index` maps block hashes to the pods (and media) holding them. Pure data and
functions, no I/O: `epp.kvevents` feeds the index from the pods' ZMQ publishers and
`epp.scheduling.plugins.precise_prefix` scores endpoints with it.
"""
