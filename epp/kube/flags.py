"""Kubernetes-mode flags, shared by `epp serve --kubernetes` and `epp operator`.

`add_arguments` only touches argparse, so building the CLI never imports the Kubernetes client
(about 0.6 s); `config_from_args` imports it lazily and returns a `runtime.KubeModeConfig`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp.kube.runtime import KubeModeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    k = p.add_argument_group("Kubernetes mode")
    k.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster)")
    k.add_argument("--kube-context", default=None)
    k.add_argument("--kube-api", default=None, help="API server URL without credentials")
    k.add_argument("--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable; default: all)")  # fmt: skip
    k.add_argument("--pool-name", default=None, help="serve only this InferencePool")
    k.add_argument("--pool-namespace", default="default")
    k.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="only the Lease holder writes status and Deployments")  # fmt: skip
    k.add_argument("--lease-name", default="epp-leader")
    k.add_argument("--lease-namespace", default="default")
    k.add_argument("--write-status", action=argparse.BooleanOptionalAction, default=True)
    k.add_argument("--reconcile-deployments", action=argparse.BooleanOptionalAction, default=True)
    k.add_argument("--status-parent", default="inference-gateway",
                   help="Gateway named in this picker's status.parents entry")  # fmt: skip
    k.add_argument("--resync", type=float, default=600.0, help="seconds between full relists")
    k.add_argument("--no-nodes", action="store_true", help="do not watch Nodes (no RBAC)")
    k.add_argument("--rollout-metrics", action="append", default=[], metavar="URL",
                   help="an EPP replica's /metrics (repeat for each): the leader runs the "
                   "InferenceModels' canary rollouts on their per-version counts")  # fmt: skip
    k.add_argument("--rollout-prometheus", default=None, metavar="URL",
                   help="Prometheus that answers rollout policies' analysis.queries")  # fmt: skip
    k.add_argument("--no-devices", action="store_true",
                   help="do not watch DRA claims, slices, taint rules")  # fmt: skip


def config_from_args(ns: argparse.Namespace) -> KubeModeConfig:
    from epp.kube.client import ClientConfig
    from epp.kube.leader import LeaderSettings
    from epp.kube.runtime import KubeModeConfig
    from epp.kube.source import SourceConfig
    from epp.kube.status import ParentRef
    from epp.kube.watch import WatchSettings

    return KubeModeConfig(
        client=ClientConfig(kubeconfig=ns.kubeconfig, context=ns.kube_context, host=ns.kube_api),
        source=SourceConfig(
            namespaces=tuple(ns.namespace),
            pool_name=ns.pool_name,
            pool_namespace=ns.pool_namespace,
            watch_nodes=not ns.no_nodes,
            watch_devices=not ns.no_devices,
            watch=WatchSettings(resync=ns.resync),
        ),
        leader_elect=ns.leader_elect,
        leader=LeaderSettings(namespace=ns.lease_namespace, name=ns.lease_name),
        write_status=ns.write_status,
        reconcile_deployments=ns.reconcile_deployments,
        parent=ParentRef(name=ns.status_parent),
        rollout_metrics=tuple(ns.rollout_metrics),
        rollout_prometheus=ns.rollout_prometheus,
    )
