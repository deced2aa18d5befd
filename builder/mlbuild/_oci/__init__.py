"""The daemonless OCI backend: image layers, config and manifests assembled in Python.

Nothing here starts a container or talks to a Docker engine to *build*: layers are normalized
tars written from host files, the config/manifest are canonical JSON, and the result is an OCI
layout directory, a tar that both ``docker load`` and ``skopeo copy oci-archive:`` accept, or a
registry push. Same inputs give the same manifest digest.

Modules, one concept each:

- ``tarlayer``   normalized, streamed, gzip-compressed layer blobs (+ diff_id)
- ``mediatypes`` OCI vs Docker media-type families
- ``image``      config / manifest / index documents as canonical JSON
- ``base``       base images: OCI layout dir, docker-archive tar, registry (``BaseImage``)
- ``rootfs``     facts read from the base layers (python3 location, /etc/passwd, /etc/group)
- ``venv``       pyvenv.cfg + bin/python symlinks, written without running Python in a container
- ``users``      the non-root user layer
- ``cache``      content-addressed blob store + layer cache on the host
- ``layout``     writing an OCI layout directory / OCI+docker-archive tar, atomically
- ``publish``    registry push of a written layout (exact bytes), ``docker load``
- ``backend``    ``OciBackend.build(spec, lock, options)``, ``build_oci_image(path, ...)``
- ``registry``, ``auth``, ``reference``  the registry client (separate owner)
"""
