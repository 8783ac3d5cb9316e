"""Replica state sharing: what each EPP replica learns from its own traffic, told to the others
off the request path (docs/replicas.md)."""
