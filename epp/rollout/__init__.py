"""Canary rollouts the gateway runs: policy steps, per-version analysis, the controller."""
