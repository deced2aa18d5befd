"""A small OCI library inside mlbuild, with no build policy in it: the image format, a registry
client and base-image reading. What goes into an image (which layers, which user, how envs are
split) is the oci backend's (``_backends/oci*.py``); nothing here starts a container or asks a
Docker engine to build.

Format:
- ``mediatypes``  OCI vs Docker media-type families
- ``image``       config / manifest / index documents as canonical JSON
- ``tarlayer``    normalized, streamed, gzip-compressed layer blobs (+ diff_id); the skip rule
- ``layout``      an OCI layout directory / OCI+docker-archive tar, written atomically
- ``cache``       content-addressed blob store + layer cache on the host

Registry client:
- ``reference``   image reference grammar, default registry
- ``auth``        credentials (Docker config, helpers) and auth challenges
- ``registry_transport``, ``registry``   HTTP + auth + errors; manifests and blobs
- ``publish``     registry push of a written layout (exact bytes), ``docker load``

Bases:
- ``base``        ``open_base``: OCI layout dir, docker-archive tar, local engine, registry
- ``base_image``  ``BaseImage`` / ``BaseLayer`` and the local readers
- ``layertar``    a layer's tar as a bounded stream
- ``rootfs*``     facts read from the base layers (python3, /etc/passwd, /etc/group), hostile entries
"""
