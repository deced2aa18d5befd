"""Host-side, content-addressed store of layer blobs, and the layer cache on top of it.

``blobs/sha256/<hex>``   every layer blob mlbuild wrote (immutable: named by its digest)
``layers/<key>.json``    what a layer *key* produced: {digest, size, diff_id}

A key is the sha256 of everything that determines a layer's bytes (for an environment layer:
the lock digest, the platform, the Python and the base's python location, the layout version,
the epoch and the gzip level). A code-only rebuild finds the environment layers by key and
writes only the small layers above them. Files are written aside and renamed, so a crash
leaves at most a stray temporary file, never a wrong blob under a digest name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .image import canonical_json
from .tarlayer import GZIP_LEVEL, Entry, LayerBlob, write_layer

__all__ = ["BlobStore", "layer_key", "LAYOUT_VERSION"]

# Bump when the way layers are laid out changes: every cached layer is then rebuilt.
LAYOUT_VERSION = 1


def layer_key(**parts: object) -> str:
    return hashlib.sha256(canonical_json({"v": LAYOUT_VERSION, **{k: str(v) for k, v in parts.items()}})).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.layers = self.root / "layers"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.layers, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def has(self, digest: str, size: int) -> bool:
        p = self.path(digest)
        return p.is_file() and p.stat().st_size == size

    def cached_layer(self, key: str) -> LayerBlob | None:
        record = self.layers / f"{key}.json"
        try:
            raw = json.loads(record.read_text())
            blob = LayerBlob(self.path(raw["digest"]), raw["digest"], int(raw["size"]), raw["diff_id"])
        except (OSError, ValueError, KeyError):
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
            record = self.layers / f"{key}.json"
            part = record.with_name(f".{record.name}.{os.getpid()}.tmp")
            part.write_text(json.dumps({"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id}))
            os.replace(part, record)
        return blob
