"""Where resources come from: a folder of manifests (`files`) or the Kubernetes API (`kube`).

Each source hands out whole `epp.api.model.ResourceSet`s: the current one, then a new one every
time its input changes. The datastore is rebuilt from them by the programs (`epp.local`,
`epp.server`); sources never touch the datastore themselves.
"""
