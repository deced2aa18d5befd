"""Host-side, content-addressed store of layer blobs, and the layer cache on top of it.

``blobs/sha256/<hex>``   every layer blob mlbuild wrote (immutable: named by its digest)
``layers/<key>.json``    what a layer *key* produced: {digest, size, diff_id}
``groups/<key>.json``    what a *group* key produced: an ordered list of layers, each with a label

A key is the sha256 of everything that determines a layer's bytes (for a per-distribution
environment layer: the distribution, its version and a fingerprint of its files, the platform,
the Python, the layout version, the epoch and the gzip level). An environment is a group: its
key (the lock digest and the rest) names the layers it split into, so a code-only rebuild finds
them without walking the env, and writes only the small layers above them. Files are written aside and renamed, so a crash
leaves at most a stray temporary file, never a wrong blob under a digest name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .image import canonical_json
from .tarlayer import GZIP_LEVEL, Entry, LayerBlob, write_layer

__all__ = ["BlobStore", "layer_key", "LAYOUT_VERSION"]

# Bump when the way layers are laid out changes: every cached layer is then rebuilt.
# 2: environments split into per-distribution layers.
LAYOUT_VERSION = 2

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def layer_key(**parts: object) -> str:
    return hashlib.sha256(canonical_json({"v": LAYOUT_VERSION, **{k: str(v) for k, v in parts.items()}})).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.layers = self.root / "layers"
        self.groups = self.root / "groups"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.layers, self.groups, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def _blob(self, raw: dict[str, object]) -> LayerBlob:
        digest, diff_id = str(raw["digest"]), str(raw["diff_id"])
        if not (_DIGEST.fullmatch(digest) and _DIGEST.fullmatch(diff_id)):
            raise ValueError(f"not a sha256 digest: {digest!r} / {diff_id!r}")
        return LayerBlob(self.path(digest), digest, int(raw["size"]), diff_id)  # type: ignore[call-overload]

    def has(self, digest: str, size: int) -> bool:
        p = self.path(digest)
        return p.is_file() and p.stat().st_size == size

    def cached_layer(self, key: str) -> LayerBlob | None:
        record = self.layers / f"{key}.json"
        try:
            blob = self._blob(json.loads(record.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None
        # The record is only trusted while its blob is there, whole.
        return blob if self.has(blob.digest, blob.size) else None

    def layer(self, key: str | None, entries: Callable[[], Iterable[Entry]], *, epoch: int, level: int = GZIP_LEVEL) -> LayerBlob:
        """The layer for ``key`` from the cache, else written from ``entries()`` and remembered.
        ``key`` None: always write (the blob still lands in the store, deduplicated by digest)."""
        if key is not None:
            hit = self.cached_layer(key)
            if hit is not None:
                return hit
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="layer-", suffix=".tar.gz")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            written = write_layer(entries(), tmp, epoch=epoch, level=level)
            final = self.path(written.digest)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        blob = LayerBlob(final, written.digest, written.size, written.diff_id)
        if key is not None:
            _write_record(self.layers / f"{key}.json", _blob_record(blob))
        return blob

    def cached_group(self, key: str) -> list[tuple[LayerBlob, str]] | None:
        """The layers (with their labels) a group key produced, if every one is still whole."""
        try:
            raw = json.loads((self.groups / f"{key}.json").read_text())
            out = [(self._blob(r), str(r["label"])) for r in raw]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None  # missing or damaged: a miss, rebuilt and rewritten
        return out if out and all(self.has(b.digest, b.size) for b, _ in out) else None

    def remember_group(self, key: str, layers: Sequence[tuple[LayerBlob, str]]) -> None:
        _write_record(self.groups / f"{key}.json", [{**_blob_record(b), "label": label} for b, label in layers])


def _blob_record(blob: LayerBlob) -> dict[str, object]:
    return {"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id}


def _write_record(record: Path, value: object) -> None:
    # Aside, then renamed: concurrent builds (threads or processes) never see half a record.
    part = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    part.write_text(json.dumps(value))
    os.replace(part, record)
