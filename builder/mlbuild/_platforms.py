"""Target platforms: ``linux/amd64`` <-> uv's ``--python-platform`` <-> wheel tags <-> OCI arch.

Images are Debian bookworm based (glibc 2.36), so a wheel is usable when its manylinux tag asks
for glibc 2.36 or older. uv accepts ``x86_64-manylinux_2_36`` / ``aarch64-manylinux_2_36``, which
makes it pick exactly the wheels that glibc can load.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["Platform", "parse_platform", "parse_platforms", "GLIBC"]

# glibc of Debian bookworm, the base of python:3.X-slim and of the test base image.
GLIBC = (2, 36)

# Accepted spellings of each architecture -> (OCI arch, OCI variant, machine name in wheel tags).
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "arm64": ("arm64", None),
    "aarch64": ("arm64", None),
    "arm64/v8": ("arm64", "v8"),
}
_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True, order=True)
class Platform:
    """One image platform. Only Linux on amd64/arm64 is supported (that is what the base images
    and manylinux wheels cover)."""

    os: str
    arch: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")

    @property
    def machine(self) -> str:
        """The machine name used in wheel tags and ``uname -m``: x86_64 or aarch64."""
        return _MACHINE[self.arch]

    @property
    def oci_arch(self) -> str:
        """``architecture`` of an OCI image config / manifest platform."""
        return self.arch

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine, as an image platform (linux/<arch>)."""
        import platform as _platform

        return parse_platform(_platform.machine() or "unknown")

    def uv_python_platform(self) -> str:
        """Value for ``uv pip compile|install --python-platform``."""
        return f"{self.machine}-manylinux_{GLIBC[0]}_{GLIBC[1]}"

    def wheel_platform_tags(self) -> tuple[str, ...]:
        """Platform tags a wheel may carry to run here, most specific first (PEP 600 + legacy).

        ``linux_<machine>`` is deliberately absent: that tag is what a wheel built locally from
        an sdist gets, and such a wheel was built for the *host*, not for the image."""
        m = self.machine
        tags = [f"manylinux_2_{minor}_{m}" for minor in range(GLIBC[1], 16, -1)]
        tags.append(f"manylinux2014_{m}")
        if m == "x86_64":
            tags += [f"manylinux2010_{m}", f"manylinux1_{m}"]
        return tuple(tags)


def parse_platform(text: str) -> Platform:
    """Parse ``linux/amd64``, ``linux/arm64``, ``linux/arm64/v8`` or a bare ``x86_64`` /
    ``aarch64`` / ``amd64`` / ``arm64`` (meaning Linux)."""
    raw = text.strip().lower()
    if not raw:
        raise ConfigError("empty platform", hint="use linux/amd64 or linux/arm64")
    os_name, _, arch_part = raw.partition("/") if "/" in raw else ("linux", "", raw)
    if os_name != "linux":
        raise ConfigError(
            f"unsupported platform {text!r}: only linux images can be built",
            hint="use linux/amd64 or linux/arm64",
        )
    try:
        arch, variant = _ARCH_ALIASES[arch_part]
    except KeyError:
        raise ConfigError(
            f"unsupported platform {text!r}: unknown architecture {arch_part!r}",
            hint="use linux/amd64 (alias x86_64) or linux/arm64 (alias aarch64)",
        ) from None
    # arm64/v8 is the only arm64 variant; normalise it away so equal platforms compare equal.
    return Platform("linux", arch, None if variant == "v8" else variant)


def parse_platforms(texts: str | tuple[str, ...] | list[str]) -> tuple[Platform, ...]:
    """Parse one or several platforms (a comma-separated string or a sequence); sorted, unique."""
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    platforms = tuple(sorted({parse_platform(t) for t in texts}))
    if not platforms:
        raise ConfigError("no platform given", hint="use linux/amd64 or linux/arm64")
    return platforms
