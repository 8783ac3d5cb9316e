"""`epp rollout status|promote|abort MODEL`: the command line of a person in a rollout's loop.

File mode (`--manifests`, the `served.yaml` that `epp up` prints) reads and writes the manifests
the local stack serves; Kubernetes mode (`--kube-api`, `--kubeconfig` or in-cluster) reads the
InferenceModels through the API server and writes their status subresource. The work itself is
`epp.rollout.command`'s; this module only builds the store the flags name.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from epp.rollout.command import run as run_command

DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("status", "promote", "abort"))
    p.add_argument("model", help="the InferenceModel's name (or the model name clients ask for)")
    p.add_argument("--manifests", type=Path, help="the manifests file `epp up` serves")
    p.add_argument("--kube-api", default=None, help="API server URL without credentials")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file")
    p.add_argument("--kube-context", default=None)
    p.add_argument("--namespace", action="append", default=[], help="look only here")


def run_parsed(args: argparse.Namespace) -> int:
    if args.manifests is not None:
        if not args.manifests.is_file():
            print(f"epp rollout: no manifests file {args.manifests}", file=sys.stderr)
            return 2
        from epp.rollout.files import FileStore

        store = FileStore(args.manifests)
        return asyncio.run(run_command(store, args.action, args.model, sys.stdout))
    return asyncio.run(_kube(args))


async def _kube(args: argparse.Namespace) -> int:
    from epp.kube.client import ClientConfig, KubeError, connect
    from epp.kube.rollouts import KubeRolloutStore

    config = ClientConfig(kubeconfig=args.kubeconfig, context=args.kube_context, host=args.kube_api)
    api = await connect(config)
    try:
        store = KubeRolloutStore(api, tuple(args.namespace))
        return await run_command(store, args.action, args.model, sys.stdout)
    except KubeError as exc:
        print(f"epp rollout: the API server answered {exc}", file=sys.stderr)
        return 1
    finally:
        await api.close()
