"""Service registry: manifests, content digests, registered versions."""

from kos_see.registry.manifest import Limits, Manifest, load_manifest
from kos_see.registry.registry import Registry, ServiceRecord

__all__ = ["Limits", "Manifest", "Registry", "ServiceRecord", "load_manifest"]
