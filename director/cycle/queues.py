"""From configuration to what a queue's cycle works with: its CE instance (one per site/CE,
made by the CE registry with the director's credential source, and kept), its `QueueSpec`,
its name in the server's records (`QueueId`) and its prepared pilot wrapper (options read from
the config and the published pilot files' manifest, kept per queue and prepared again when the
manifest changes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from director import ce as ce_registry
from director.ce.base import ComputingElement, QueueSpec
from director.ce.credentials import CredentialSource, NoCredentials, ServerCredentials
from director.client import QueueId, ServerClient
from director.config import QueueRef, Settings
from director.errors import ConfigError
from director.pilot_files import ManifestCache, download_locations, resolve_files
from director.render import TemplateRenderer, default_template_dir
from director.wrapper import PreparedWrapper, WrapperFile, WrapperOptions, WrapperRenderer

log = logging.getLogger(__name__)

GRID_TYPES = {"local": "Local", "arc": "ARC", "htcondor": "HTCondorCE"}
"""The server's GridType of each CE kind."""


def safe_name(name: str) -> str:
    """`name` with every character but letters, digits, `.`, `_` and `-` made `_`: a path part."""
    return "".join(char if char.isalnum() or char in "._-" else "_" for char in name)


def queue_id(ref: QueueRef) -> QueueId:
    """The queue's name in the server's pilot records: its VO's pilots only."""
    return QueueId(ref.site, ref.ce, ref.ce_queue, ref.vo)


def sibling_ids(ref: QueueRef) -> list[QueueId]:
    """The server's names of the other VOs' entries of a CE queue shared by several VOs: their
    pilots run on the same CE queue, and each CE job is theirs or ours by its stamp."""
    return [QueueId(ref.site, ref.ce, ref.ce_queue, vo) for vo in ref.vos if vo != ref.vo]


def ce_kind(ref: QueueRef) -> str:
    return str(getattr(ref.entry.ce, "kind", "?"))


def spec_for(ref: QueueRef) -> QueueSpec:
    """The queue as its CE sees it."""
    queue = ref.config
    return QueueSpec(
        name=ref.ce_queue,
        site=ref.site,
        ce=ref.ce,
        processors=queue.processors,
        memory_mb=queue.memory_mb,
        max_runtime_s=queue.max_runtime_s,
        tags=tuple(queue.tags),
        required_tags=tuple(queue.required_tags),
        platform=queue.platform,
        environment=dict(queue.environment),
        extra_attributes=dict(queue.extra_attributes),
    )


class QueueFactory:
    """Makes and keeps the CEs and prepared wrappers of the configured queues."""

    def __init__(
        self,
        settings: Settings,
        client: ServerClient | None,
        ces: dict[str, ComputingElement] | None = None,
    ) -> None:
        """`ces` maps `site/ce` to a CE instance to use instead of one made from the config."""
        self.settings = settings
        self.credentials: CredentialSource = (
            ServerCredentials(client)
            if client is not None
            else NoCredentials("the director has no server (dry run)")
        )
        """What the CEs present to their CEs: tokens bought from the server, cached."""
        extra = [settings.director.template_dir] if settings.director.template_dir else []
        self.renderer = TemplateRenderer(extra)
        self._template_dirs = [*extra, default_template_dir()]
        self.wrappers = WrapperRenderer(self.renderer)
        self._ces: dict[str, ComputingElement] = dict(ces or {})
        self._prepared: dict[str, PreparedWrapper] = {}
        self.manifests = ManifestCache()
        """`pilot.manifest` folders' checksums (`director.pilot_files`), re-read when stale."""
        self._manifest_digest: dict[str, str] = {}
        self._files: dict[Path, tuple[int, int, bytes]] = {}
        """Path -> (mtime, size, content) of the files read for the wrappers (`_read`)."""
        self._ca_text: dict[Path, tuple[bytes, str]] = {}

    def ce_for(self, ref: QueueRef) -> ComputingElement:
        """The queue's CE, made on first use; queues of one site/CE share it."""
        key = f"{ref.site}/{ref.ce}"
        ce = self._ces.get(key)
        if ce is None:
            work_dir = (
                self.settings.director.work_dir / "ce" / safe_name(ref.site) / safe_name(ref.ce)
            )
            ce = ce_registry.make_ce(
                ref.entry.ce,
                renderer=self.renderer,
                work_dir=work_dir,
                credentials=self.credentials,
            )
            self._ces[key] = ce
        return ce

    def _read(self, path: Path) -> bytes:
        """The file's content, one `bytes` shared by every queue that embeds it (10,000 queues
        would otherwise hold 10,000 copies of the pilot and of the CA bundle); read again when
        its modification time or size changed, as each queue read it before."""
        stat = path.stat()
        known = self._files.get(path)
        if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
            return known[2]
        content = path.read_bytes()
        self._files[path] = (stat.st_mtime_ns, stat.st_size, content)
        return content

    def _find_template_file(self, name: str) -> Path:
        for folder in self._template_dirs:
            if (folder / name).is_file():
                return folder / name
        raise ConfigError(f"pilot.files: {name!r} not found in the template folders")

    def wrapper_options(self, ref: QueueRef) -> WrapperOptions:
        """The queue's pilot options in the wrapper's terms (`director.wrapper.WrapperOptions`)."""
        pilot = ref.pilot
        configured: list[tuple[str, str, bytes | None]] = []
        for item in pilot.files or []:
            content = None
            if item.path is not None:
                content = self._read(item.path)
            elif item.template is not None:
                content = self._read(self._find_template_file(item.template))
            configured.append((item.name, (item.sha512 or "").lower(), content))
        if pilot.manifest:  # the sums as DIRAC publishes them (a ManifestError fails this queue)
            manifest = self.manifests.get(pilot.manifest, self.manifest_ca(ref))
            configured = resolve_files(manifest, configured if pilot.files is not None else None)
        files = [WrapperFile(name, sha512, content) for name, sha512, content in configured]
        ca_file = pilot.ca_file or self.settings.server.ca_bundle
        ca_pem = self._ca_pem(ca_file) if ca_file is not None and not pilot.ca_path else ""
        optional: dict[str, Any] = {}
        for name in (
            "diracx_url_option",
            "stamp_option",
            "token_file_option",
            "secret_option",
            "pilot_script",
            "work_dir_base",
        ):
            if getattr(pilot, name) is not None:
                optional[name] = getattr(pilot, name)
        if pilot.python_commands:
            optional["python_commands"] = tuple(pilot.python_commands)
        return WrapperOptions(
            server_url=pilot.diracx_url or str(self.settings.server.url),
            vo=ref.vo,
            site=ref.site,
            ce=ref.ce,
            queue=ref.ce_queue,
            pilot_files=tuple(files),
            pilot_locations=tuple(
                download_locations(
                    pilot.manifest, pilot.cvmfs_locations or [], pilot.locations or []
                )
            ),
            setup=pilot.setup or "",
            release=pilot.release or "",
            project=pilot.project or "",
            processors=ref.config.processors,
            tags=tuple(ref.config.tags),
            required_tags=tuple(ref.config.required_tags),
            extensions=tuple(pilot.extensions or ()),
            wn_vo=pilot.wn_vo or "",
            extra_options=tuple(pilot.extra_options or ()),
            ca_pem=ca_pem,
            ca_path=pilot.ca_path or "",
            environment=dict(pilot.environment or {}),
            **optional,
        )

    def _ca_pem(self, path: Path) -> str:
        """The CA bundle as text, shared like the pilot files (`_read`)."""
        content = self._read(path)
        text = self._ca_text.get(path)
        if text is None or text[0] is not content:
            text = self._ca_text[path] = (content, content.decode())
        return text[1]

    def manifest_ca(self, ref: QueueRef) -> Path | None:
        """The CAs an `https://` manifest location of the queue is verified with."""
        return ref.pilot.ca_file or self.settings.server.ca_bundle

    def prepared(self, ref: QueueRef) -> PreparedWrapper:
        """The queue's wrapper, prepared once (its pilot files read, its options checked) and
        again when its manifest changes; ConfigError names the queue's `pilot` block."""
        prepared = self._prepared.get(ref.key)
        path = f"sites.{ref.site}.ces.{ref.ce}.queues.{ref.queue}.pilot"
        manifest = ref.pilot.manifest
        if manifest:  # prepared again when the published files change; failed while unreadable
            try:
                digest = self.manifests.get(manifest, self.manifest_ca(ref)).digest
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            if self._manifest_digest.get(ref.key) != digest:
                prepared = None
                self._manifest_digest[ref.key] = digest
        if prepared is None:
            try:
                prepared = self.wrappers.prepare(self.wrapper_options(ref))
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            except OSError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            self._prepared[ref.key] = prepared
        return prepared

    def check(self, queues: list[QueueRef]) -> list[str]:
        """Problems found by preparing every enabled queue's wrapper."""
        problems = []
        for ref in queues:
            if ref.enabled:
                try:
                    self.prepared(ref)
                except ConfigError as exc:
                    problems.append(str(exc))
        return problems

    async def close(self) -> None:
        """Close every CE made (a failure is logged: the others still close), then the
        credential source."""
        for ce in self._ces.values():
            try:
                await ce.close()
            except Exception:
                log.exception("closing a CE failed")
        self._ces.clear()
        await self.credentials.aclose()
