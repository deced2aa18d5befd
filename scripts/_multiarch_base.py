"""Assemble and push the multi-platform test base image (used by build-multiarch-base.sh).

    _multiarch_base.py build --out DIR --tag TAG --python-version V \
        --docker-save linux/amd64=DIR_OF_DOCKER_SAVE --rootfs-tar linux/arm64/v8=ROOTFS.tar
    _multiarch_base.py push --layout DIR --tag TAG --registry HOST:PORT --repository library/python

``build`` writes an OCI image layout (one gzip layer per platform input layer, an OCI config
and manifest per platform, an OCI index over them, tagged TAG in index.json), atomically.
``push`` uploads it with mlbuild's own RegistryClient: blobs, then each platform manifest by
digest, then the index under the tag.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mlbuild._errors import MlbuildError
from mlbuild._oci.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2023-01-01T00:00:00Z"  # fixed: the same inputs give the same digests
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def add_bytes(self, data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_layer(self, tar_path: Path) -> tuple[dict, str]:
        """gzip (mtime 0, no name) a tar; returns (descriptor, diff_id)."""
        diff = hashlib.sha256()
        tmp = self.root / "blobs" / "layer.tmp"
        with open(tar_path, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                while chunk := src.read(1 << 20):
                    diff.update(chunk)
                    gz.write(chunk)
        digest_h = hashlib.sha256()
        with open(tmp, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest_h.update(chunk)
        digest = "sha256:" + digest_h.hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, self.blob_path(digest))
        return {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size}, "sha256:" + diff.hexdigest()


def _platform(text: str) -> dict:
    parts = text.split("/")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        plat["variant"] = parts[2]
    return plat


def _docker_save_layers(save_dir: Path) -> tuple[list[Path], dict]:
    manifest = json.loads((save_dir / "manifest.json").read_text())[0]
    config = json.loads((save_dir / manifest["Config"]).read_text())
    return [save_dir / layer for layer in manifest["Layers"]], config.get("config") or {}


def build(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        layout = Layout(tmp_root)
        inputs: list[tuple[str, list[Path], dict]] = []
        for spec in args.docker_save:
            plat, _, path = spec.partition("=")
            layers, cfg = _docker_save_layers(Path(path))
            inputs.append((plat, layers, cfg))
        for spec in args.rootfs_tar:
            plat, _, path = spec.partition("=")
            inputs.append((plat, [Path(path)], {}))
        entries = []
        for plat, layer_tars, src_cfg in inputs:
            descs, diff_ids = [], []
            for tar_path in layer_tars:
                desc, diff_id = layout.add_layer(tar_path)
                descs.append(desc)
                diff_ids.append(diff_id)
            env = [PATH_ENV, "LANG=C.UTF-8", f"PYTHON_VERSION={args.python_version}"]
            platform = _platform(plat)
            config = {
                **platform,
                "created": CREATED,
                "config": {"Env": env, "Cmd": src_cfg.get("Cmd") or ["python3"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created": CREATED, "created_by": f"mlbuild test base for {plat}"}],
            }
            config_desc = layout.add_bytes(canonical(config), OCI_CONFIG)
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": descs}
            entry = layout.add_bytes(canonical(manifest), OCI_MANIFEST)
            entries.append({**entry, "platform": platform})
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        index_desc = layout.add_bytes(canonical(index), OCI_INDEX)
        top = {"schemaVersion": 2, "mediaType": OCI_INDEX,
               "manifests": [{**index_desc, "annotations": {REF_NAME: args.tag}}]}
        (tmp_root / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
        (tmp_root / "index.json").write_bytes(canonical(top))
        if (out / "index.json").exists():
            print(f"{out} was completed meanwhile by another run; keeping it")
        else:
            shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier attempt
            os.replace(tmp_root, out)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    print(f"index {index_desc['digest']} ({len(entries)} platforms)")


def push(args: argparse.Namespace) -> None:
    root = Path(args.layout)
    layout = Layout(root)
    top = json.loads((root / "index.json").read_text())
    entry = next((m for m in top["manifests"] if m.get("annotations", {}).get(REF_NAME) == args.tag), None)
    if entry is None:
        sys.exit(f"{root}/index.json has no image tagged {args.tag}")
    index_bytes = layout.blob_path(entry["digest"]).read_bytes()
    index = json.loads(index_bytes)
    counts: dict[str, int] = {}
    started = time.monotonic()
    with RegistryClient(args.registry) as client:
        for m in index["manifests"]:
            manifest_bytes = layout.blob_path(m["digest"]).read_bytes()
            manifest = json.loads(manifest_bytes)
            for blob in [manifest["config"], *manifest["layers"]]:
                how = client.push_blob(args.repository, blob["digest"], layout.blob_path(blob["digest"]),
                                       blob["size"])
                counts[how] = counts.get(how, 0) + 1
            client.push_manifest(args.repository, m["digest"], manifest_bytes, m["mediaType"])
        digest = client.push_manifest(args.repository, args.tag, index_bytes, entry["mediaType"])
    summary = ", ".join(f"{n} {how}" for how, n in sorted(counts.items()))
    print(f"{args.registry}/{args.repository}:{args.tag}@{digest} (blobs: {summary}; "
          f"{time.monotonic() - started:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--tag", required=True)
    b.add_argument("--python-version", required=True)
    b.add_argument("--docker-save", action="append", default=[], metavar="PLATFORM=DIR")
    b.add_argument("--rootfs-tar", action="append", default=[], metavar="PLATFORM=TAR")
    p = sub.add_parser("push")
    p.add_argument("--layout", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--repository", required=True)
    args = parser.parse_args()
    try:
        build(args) if args.cmd == "build" else push(args)
    except MlbuildError as exc:  # a clear message, not a traceback
        sys.exit(exc.render())


if __name__ == "__main__":
    main()
