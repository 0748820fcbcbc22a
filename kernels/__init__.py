"""Numerics and modules: attention math, static KV cache, grouped q/k/v and gate/up projections."""
