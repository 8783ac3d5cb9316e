"""Why the maps of block hashes are cut into shards, and how many.

A Python dict under churn (entries added and removed, its size steady) rebuilds its whole table
whenever the slots that removals left behind run out, and a set does the same. The rebuild holds
the event loop in proportion to the entries: 2 ms for 31k blocks, 6-8 ms for 125k, 113 ms for
2M (64 pods of 31k KV blocks) on this project's VM. So a map of block hashes that spans pods is
kept as `SHARDS` dicts chosen by a hash's low bits (`h & SHARD_MASK`): 2M blocks then stall at
most 0.4 ms. One pod's own hashes are cut into `POD_SHARDS` (at most 4k each for 250k blocks).
The price is the `&` of every lookup, about 25 ns on a 64-bit hash.
"""

from __future__ import annotations

SHARDS = 256
SHARD_MASK = SHARDS - 1
POD_SHARDS = 64
POD_SHARD_MASK = POD_SHARDS - 1
