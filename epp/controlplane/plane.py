"""One control plane: resources in, Envoy config and status out.

`ControlPlane.apply` turns a `ResourceSet` into a new xDS snapshot (certificates → `resolve` →
`translate` → `XdsCache.set`); `follow` applies every set a source hands out. `status` merges the
resolution's conditions with what the ADS server saw Envoy accept or reject. `main` builds one
per process; tests and the benchmark build their own and call `apply` directly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from pathlib import Path

from google.protobuf import json_format

from epp.api.model import ResourceSet
from epp.controlplane.backends import doc_key
from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.resolve import Resolved, resolve
from epp.controlplane.status import StatusReport, programmed
from epp.controlplane.tls import CertificateFolder, secrets_from_manifests
from epp.controlplane.translate import translate
from epp.controlplane.xds import AdsServer, XdsCache

log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(
        self,
        options: TranslateOptions,
        cert_folder: Path | None = None,
        gateway_classes: Collection[str] = (),
    ) -> None:
        self.options = options
        self.certificates = CertificateFolder(cert_folder) if cert_folder else None
        self.gateway_classes = tuple(gateway_classes)
        self.cache = XdsCache()
        self.server = AdsServer(self.cache)
        self.resolved = Resolved((), (), StatusReport())
        self.error: str | None = None

    def apply(self, resources: ResourceSet) -> bool:
        """Installs the config for `resources`; True when Envoy has something new to fetch."""
        certs = secrets_from_manifests(resources.other)
        if self.certificates is not None:
            for key, hosts in referenced_secrets(resources.other).items():
                if key not in certs:
                    certs[key] = self.certificates.pair(key, hosts)
        resolved = resolve(resources, set(certs), self.gateway_classes)
        try:
            config = translate(resolved, resources, certs, self.options)
        except json_format.ParseError as exc:
            self.error = f"cannot build the Envoy config: {exc}"
            log.error("%s; keeping the last config", self.error)
            return False
        self.error = None
        self.resolved = resolved
        return self.cache.set(config)

    async def follow(self, sets: AsyncIterator[ResourceSet]) -> None:
        async for resources in sets:
            if self.apply(resources):
                log.info("new config generation %d", self.cache.generation)

    def status(self) -> StatusReport:
        server = self.server
        nack = next(
            (
                n.message
                for n in reversed(server.nacks)
                if self.cache.versions.get(n.type_url) == n.version
            ),
            None,
        )
        return programmed(
            self.resolved.status, server.acked_everywhere(), nack, len(server.streams)
        )

    def debug(self) -> dict[str, object]:
        """What the debug endpoint serves: status, versions, Envoys and recent NACKs."""
        streams = [
            {
                "node": s.node,
                "protocol": s.protocol,
                "types": {
                    t.rsplit(".", 1)[-1]: {
                        "sent": st.sent_version,
                        "acked": st.acked_version,
                        "nacked": st.nacked_version,
                    }
                    for t, st in s.types.items()
                },
            }
            for s in self.server.streams.values()
        ]
        return {
            "status": self.status().to_json(),
            "generation": self.cache.generation,
            "versions": {t.rsplit(".", 1)[-1]: v for t, v in self.cache.versions.items()},
            "envoys": streams,
            "nacks": [
                {"node": n.node, "type": n.type_url, "version": n.version, "message": n.message}
                for n in self.server.nacks[-10:]
            ],
            "error": self.error,
        }


def referenced_secrets(others: Iterable[Mapping[str, object]]) -> dict[str, set[str]]:
    """Secret keys HTTPS Gateway listeners name, with the hostnames a certificate must cover."""
    hosts: set[str] = set()
    for doc in others:
        spec = doc.get("spec")
        if doc.get("kind") == "HTTPRoute" and isinstance(spec, dict):
            hosts.update(h for h in spec.get("hostnames") or [] if isinstance(h, str))
    out: dict[str, set[str]] = {}
    for doc in others:
        spec = doc.get("spec")
        if doc.get("kind") != "Gateway" or not isinstance(spec, dict):
            continue
        namespace = doc_key(doc).split("/", 1)[0]
        for listener in spec.get("listeners") or []:
            tls = listener.get("tls") if isinstance(listener, dict) else None
            for ref in (tls or {}).get("certificateRefs") or []:
                if isinstance(ref, dict) and ref.get("name"):
                    key = f"{ref.get('namespace', namespace)}/{ref['name']}"
                    named = listener.get("hostname")
                    out.setdefault(key, set()).update(hosts | ({named} if named else set()))
    return out
