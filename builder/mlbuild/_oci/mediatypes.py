"""Media types of the two manifest families (OCI and Docker schema 2).

A new image follows its base's family: a registry or tool that served the base with Docker
media types is known to accept them, and mixing families inside one manifest is rejected by
some registries. Bases with no manifest of their own (docker-archive tars) get the OCI family.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "OCI", "DOCKER", "family_of", "UNCOMPRESSED_LAYER_TYPES"]


@dataclass(frozen=True)
class Family:
    name: str
    manifest: str
    index: str
    config: str
    layer_gzip: str
    layer_tar: str


OCI = Family(
    "oci",
    manifest="application/vnd.oci.image.manifest.v1+json",
    index="application/vnd.oci.image.index.v1+json",
    config="application/vnd.oci.image.config.v1+json",
    layer_gzip="application/vnd.oci.image.layer.v1.tar+gzip",
    layer_tar="application/vnd.oci.image.layer.v1.tar",
)
DOCKER = Family(
    "docker",
    manifest="application/vnd.docker.distribution.manifest.v2+json",
    index="application/vnd.docker.distribution.manifest.list.v2+json",
    config="application/vnd.docker.container.image.v1+json",
    layer_gzip="application/vnd.docker.image.rootfs.diff.tar.gzip",
    layer_tar="application/vnd.docker.image.rootfs.diff.tar",
)

UNCOMPRESSED_LAYER_TYPES = frozenset({OCI.layer_tar, DOCKER.layer_tar})
MANIFEST_TYPES = frozenset({OCI.manifest, DOCKER.manifest})
INDEX_TYPES = frozenset({OCI.index, DOCKER.index})


def family_of(media_type: str | None) -> Family:
    """The family of a manifest/index/config media type; unknown or absent means OCI."""
    if media_type and media_type.startswith("application/vnd.docker."):
        return DOCKER
    return OCI

