"""Resources as users write them, parsed once into one internal model (`epp.api.model`).

Both shapes are accepted: the seed document's `gateway.networking.x-k8s.io/v1alpha1` and the
upstream `inference.networking.x-k8s.io/v1alpha2` / `inference.networking.k8s.io/v1`.
"""
