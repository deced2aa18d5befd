"""Reading one base layer's tar as a forward-only stream with bounded memory, whatever its
compression (sniffed from its bytes: a docker-archive's media type says nothing)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from .._errors import BuildError

if TYPE_CHECKING:  # pragma: no cover
    from .base_image import BaseLayer

__all__ = ["EXTENDED_HEADER_MAX", "LAYER_READ_ERRORS", "open_layer_tar"]


# tarfile's own "r|gz" / "r|*" inflates each compressed read in one call with no output limit:
# a 10 KB read of a gzip bomb becomes ~10 MB, of a bzip2 bomb far more. The stdlib file readers
# below inflate with max_length, so every read returns at most what was asked; tarfile then
# reads this plain stream in _TAR_BUFSIZE blocks, skipping file data it is never asked for.
_TAR_BUFSIZE = 256 << 10
# What reading a layer stream can raise (zlib and lzma errors are not OSErrors).
LAYER_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
)


# tarfile reads a pax or GNU long-name header whole into memory, so a bomb can hide there too.
# Real ones hold a path (PATH_MAX is 4096) and a few xattrs.
EXTENDED_HEADER_MAX = 64 << 10


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > EXTENDED_HEADER_MAX:
            # A ReadError passes through TarFile.next (a HeaderError would end the archive silently).
            raise tarfile.ReadError(f"an extended header of {self.size} bytes, more than the {EXTENDED_HEADER_MAX} mlbuild reads")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


class _Prefixed:
    """``head`` (already read to sniff the format), then the rest of ``f``."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head = head
        self._f = f

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._f.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._f.read(n)

    def readable(self) -> bool:
        return True


@contextlib.contextmanager
def open_layer_tar(layer: BaseLayer) -> Iterator[tarfile.TarFile]:
    """The layer's tar as a forward-only stream (compression sniffed from its bytes, since a
    docker-archive's media type says nothing), with memory bounded whatever the compression
    ratio. Read errors are ``BuildError``s naming where the layer came from."""
    hint = "the base image is corrupt or truncated; fetch or export it again"
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(layer.open())
        head = raw.read(6)
        src: Any = _Prefixed(head, raw)
        kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "tar")
        if kind == "zstd":
            raise BuildError(f"{layer.origin}: a zstd-compressed layer, which mlbuild cannot read",
                             hint="use a base image whose layers are gzip-compressed or plain tar")
        if kind == "gzip":
            src = stack.enter_context(gzip.GzipFile(fileobj=src, mode="rb"))
        elif kind == "bzip2":
            src = stack.enter_context(bz2.BZ2File(src, mode="rb"))
        elif kind == "xz":
            src = stack.enter_context(lzma.LZMAFile(src, mode="rb"))
        try:
            tar = stack.enter_context(tarfile.open(fileobj=src, mode="r|", bufsize=_TAR_BUFSIZE, tarinfo=_BoundedTarInfo))
        except LAYER_READ_ERRORS as exc:
            raise BuildError(f"{layer.origin}: not a readable layer tar ({exc})", hint=hint) from exc
        yield tar


