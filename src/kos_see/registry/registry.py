"""Registered service versions, each pinned by its content digest.

A service stays in its folder; the registry records the folder, the manifest
and the digest. Resolving a service re-checks the digest (re-hashing only when
a file's size or mtime moved), so code edited after registration is refused,
never run under the old version's name.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydantic import ValidationError

from kos_see.errors import (
    ManifestError,
    RequestRefused,
    ServiceChanged,
    ServiceNotFound,
)
from kos_see.models import ServiceRecord
from kos_see.registry.digest import (
    Signature,
    content_digest,
    service_dirs,
    service_files,
    stat_signature,
)
from kos_see.registry.manifest import Manifest, load_manifest
from kos_see.store import Store


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version``."""
    name, _, version = ref.partition("@")
    if not name:
        raise RequestRefused(f"{ref!r} names no service; write NAME or NAME@VERSION")
    return name, version or None


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._verified: dict[tuple[str, str], tuple[list[Path], Signature]] = {}
        self._resolved: dict[tuple[str, str], tuple[ServiceRecord, Manifest]] = {}
        self._lock = threading.Lock()

    def add(self, folder: Path) -> tuple[ServiceRecord, bool]:
        """Register the service in ``folder``; False when that exact version
        with that exact content is registered already."""
        folder = folder.expanduser().resolve()
        manifest = load_manifest(folder)
        digest = content_digest(folder)
        existing = self.store.get_service(manifest.name, manifest.version)
        if existing is not None:
            if existing.digest == digest:
                return existing, False
            raise ServiceChanged(
                f"{manifest.name}@{manifest.version} is already registered with "
                f"digest {existing.digest[:19]}, and {folder} now has "
                f"{digest[:19]}; a registered version is never changed: "
                "raise 'version' in the manifest and add it again",
                service=manifest.name,
                version=manifest.version,
            )
        record = ServiceRecord(
            name=manifest.name,
            version=manifest.version,
            digest=digest,
            path=str(folder),
            manifest=manifest.model_dump(mode="json"),
            registered_at=time.time(),
        )
        self.store.add_service(record)
        return record, True

    def resolve(self, ref: str) -> tuple[ServiceRecord, Manifest]:
        """The registered version ``ref`` names, its files checked unchanged."""
        name, version = parse_ref(ref)
        if version is None:
            version = self.store.latest_version(name)
            if version is None:
                raise ServiceNotFound(self._not_found(name, None), service=ref)
        cached = self._resolved.get((name, version))
        if cached is None:
            record = self.store.get_service(name, version)
            if record is None:
                raise ServiceNotFound(self._not_found(name, version), service=ref)
            cached = (record, _registered_manifest(record))
            # A registered version never changes, so it can be kept for good.
            self._resolved[(record.name, record.version)] = cached
        self.verify(cached[0])
        return cached

    def verify(self, record: ServiceRecord) -> None:
        """Refuse a service whose files differ from its registered digest.

        Re-hashing happens only when a stat of the files and folders seen at
        the last check differs, so the common case costs a few stat calls.
        """
        key = (record.name, record.version)
        with self._lock:
            known = self._verified.get(key)
        if known is not None:
            paths, signature = known
            try:
                if stat_signature(paths) == signature:
                    return
            except OSError:
                pass  # a file went away: the full check below says what
        self._verify_content(record)

    def _verify_content(self, record: ServiceRecord) -> None:
        folder = Path(record.path)
        try:
            paths = service_dirs(folder) + service_files(folder)
            signature = stat_signature(paths)
            digest = content_digest(folder)
        except (OSError, ManifestError) as exc:
            raise ServiceChanged(
                f"{record.ref} cannot be read at {folder}: {exc}",
                service=record.ref,
            ) from exc
        if digest != record.digest:
            raise ServiceChanged(
                f"{record.ref}: the files in {folder} changed since it was "
                f"registered (digest {record.digest[:19]}, now {digest[:19]}); "
                "refusing to run edited code under a registered version: raise "
                "'version' in service.toml and run 'kos-see services add' again",
                service=record.ref,
            )
        with self._lock:
            self._verified[(record.name, record.version)] = (paths, signature)

    def list(self) -> list[ServiceRecord]:
        return self.store.list_services()

    def _not_found(self, name: str, version: str | None) -> str:
        versions = [r.version for r in self.store.list_services() if r.name == name]
        if version is not None and versions:
            return (
                f"service {name!r} has no version {version!r}; registered: "
                + ", ".join(versions)
            )
        return (
            f"no service {name!r} is registered; add it with "
            "'kos-see services add PATH'"
        )


def _registered_manifest(record: ServiceRecord) -> Manifest:
    # A version registered before a check was added may fail it now.
    try:
        return Manifest.model_validate(record.manifest)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ManifestError(
            f"{record.ref} was registered with a manifest the engine now refuses "
            f"({problems}); register a new version with it fixed",
            service=record.ref,
        ) from exc
