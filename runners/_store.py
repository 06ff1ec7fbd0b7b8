"""The agent's data dir: node identity, staged uploads, stage versions and the active pointer.

Layout (all writes are temp file + fsync + os.replace, so a crash at any instant leaves either the old
or the new state, never a half-written one):

    DATA/node_id                     UUID, stable across restarts
    DATA/state.json                  {"cfg": config change counter}
    DATA/incoming/*.part             uploads in progress; wiped at start
    DATA/stages/ID/active.json       {"current": VERSION, "previous": VERSION | ""}
    DATA/stages/ID/versions/VERSION/model.onnx, manifest.json
    DATA/queue.sqlite                store-and-forward queue (runners._forward)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from runners._proto import tierdeck_control_pb2 as ctl

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> None:
    """Refuse stage ids and versions that could escape the data dir or confuse an operator."""
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '..'")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o666, *, make_parents: bool = True) -> None:
    """Write a file so that readers (and a crash) see the old or the new content, nothing between.

    `mode` (less the umask) holds from the file's creation: a key written with 0o600 is never readable by others.
    Without `make_parents` a missing folder is an error (FileNotFoundError), as for an operator's export.
    """
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a half file nor a stray temporary
        raise
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class StoredStage:
    """A stage version on disk."""

    manifest: ctl.StageManifest
    model_path: Path
    previous_version: str
    activated_unix_ms: int


class StageStore:
    """Blocking file operations on the data dir; the agent calls them from its I/O executor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stages_dir = root / "stages"
        self.incoming = root / "incoming"
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        # Uploads that were in flight when the agent died are garbage.
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def node_id(self) -> str:
        """The node's UUID, created on first start."""
        path = self.root / "node_id"
        if path.exists():
            return path.read_text().strip()
        value = str(uuid.uuid4())
        write_atomic(path, value.encode())
        return value

    def config_counter(self) -> int:
        """The persisted config change counter."""
        path = self.root / "state.json"
        return int(json.loads(path.read_text()).get("cfg", 0)) if path.exists() else 0

    def save_config_counter(self, value: int) -> None:
        """Persist the config change counter."""
        write_atomic(self.root / "state.json", json.dumps({"cfg": value}).encode())

    def new_upload(self) -> Path:
        """A fresh path for an upload in progress."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def _active(self, stage_id: str) -> dict[str, str]:
        path = self.stages_dir / stage_id / "active.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def version_dir(self, stage_id: str, version: str) -> Path:
        """Where a stage version lives."""
        return self.stages_dir / stage_id / "versions" / version

    def has_version(self, stage_id: str, version: str) -> ctl.StageManifest | None:
        """The manifest of an existing version, if there is one."""
        path = self.version_dir(stage_id, version) / "manifest.json"
        if not path.exists():
            return None
        return json_format.Parse(path.read_text(), ctl.StageManifest())

    def install(self, upload: Path, manifest: ctl.StageManifest) -> StoredStage:
        """Move a verified upload into its version dir and make it the active version."""
        stage_dir = self.stages_dir / manifest.stage_id
        target = self.version_dir(manifest.stage_id, manifest.version)
        target.mkdir(parents=True, exist_ok=True)
        with open(upload, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(upload, target / "model.onnx")
        write_atomic(target / "manifest.json", json_format.MessageToJson(manifest).encode())
        _fsync_dir(target)
        previous = self._active(manifest.stage_id).get("current", "")
        if previous == manifest.version:
            previous = self._active(manifest.stage_id).get("previous", "")
        self._set_active(stage_dir, manifest.version, previous)
        return self.load(manifest.stage_id)  # type: ignore[return-value]

    def _set_active(self, stage_dir: Path, current: str, previous: str) -> None:
        write_atomic(stage_dir / "active.json", json.dumps({"current": current, "previous": previous}).encode())
        keep = {current, previous}
        for old in (stage_dir / "versions").iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def save_manifest(self, manifest: ctl.StageManifest) -> None:
        """Persist a changed policy of the active version."""
        path = self.version_dir(manifest.stage_id, manifest.version) / "manifest.json"
        write_atomic(path, json_format.MessageToJson(manifest).encode())

    def rollback(self, stage_id: str) -> StoredStage:
        """Swap the active and the previous version."""
        active = self._active(stage_id)
        if not active.get("previous"):
            raise LookupError(f"stage '{stage_id}' has no previous version to roll back to")
        self._set_active(self.stages_dir / stage_id, active["previous"], active["current"])
        stored = self.load(stage_id)
        assert stored is not None
        return stored

    def load(self, stage_id: str) -> StoredStage | None:
        """The active version of a stage, or None."""
        active = self._active(stage_id)
        if not active.get("current"):
            return None
        vdir = self.version_dir(stage_id, active["current"])
        manifest = json_format.Parse((vdir / "manifest.json").read_text(), ctl.StageManifest())
        stamp = int((self.stages_dir / stage_id / "active.json").stat().st_mtime * 1000)
        return StoredStage(manifest, vdir / "model.onnx", active.get("previous", ""), stamp)

    def stage_ids(self) -> list[str]:
        """Every stage with an active version."""
        return sorted(p.name for p in self.stages_dir.iterdir() if (p / "active.json").exists())

    def remove(self, stage_id: str) -> bool:
        """Delete a stage and all its versions."""
        stage_dir = self.stages_dir / stage_id
        if not stage_dir.exists():
            return False
        trash = self.root / f".removed-{uuid.uuid4().hex}"
        os.replace(stage_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True
