"""The gateway control plane: Gateway API + inference resources → Envoy config over ADS.

`resolve` (+ `backends`, `priority`) reads the resources, `translate` (+ `clusters`, `tls`)
builds Envoy protos, `xds` serves them, `status` reports conditions, `main` runs it all as
`epp controlplane`. See docs/controlplane.md.
"""
