"""Kubernetes mode (an L3 edge beside `epp.sources`): the cluster as the source of resources.

`client` (the `kubernetes_asyncio` HTTP layer, generic resource paths), `watch` (list + watch
reflectors), `source` (`KubeSource`: the `ResourceSet`s a serving replica applies), and the
leader-only half: `leader` (Lease election), `status` (conditions via `/status`),
`deployments` (seed pools' Deployments), `controller` (runs them), `flags` + `runtime`
(command line → objects), `serving` (readiness after the first sync), `main` (`epp operator`).
"""
