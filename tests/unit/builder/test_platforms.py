"""Platform parsing and the values derived from it (uv --python-platform, wheel tags, OCI arch)."""

from __future__ import annotations

import pytest
from mlbuild._errors import ConfigError
from mlbuild._platforms import Platform, parse_platform, parse_platforms


@pytest.mark.parametrize("text,expected", [
    ("linux/amd64", "linux/amd64"), ("x86_64", "linux/amd64"), ("amd64", "linux/amd64"),
    ("Linux/X86_64", "linux/amd64"), ("linux/arm64", "linux/arm64"), ("aarch64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"), (" linux/aarch64 ", "linux/arm64"),
])
def test_aliases(text, expected):
    assert str(parse_platform(text)) == expected


def test_uv_platform_and_oci_arch_match_debian_bookworm():
    amd, arm = parse_platform("linux/amd64"), parse_platform("linux/arm64")
    assert amd.uv_python_platform() == "x86_64-manylinux_2_36"
    assert arm.uv_python_platform() == "aarch64-manylinux_2_36"
    assert (amd.oci_arch, arm.oci_arch) == ("amd64", "arm64")
    assert (amd.machine, arm.machine) == ("x86_64", "aarch64")


def test_wheel_tags_accept_manylinux_up_to_glibc_236_and_never_host_builds():
    tags = parse_platform("linux/arm64").wheel_platform_tags()
    assert "manylinux_2_36_aarch64" in tags and "manylinux_2_17_aarch64" in tags
    assert "manylinux2014_aarch64" in tags
    assert "manylinux_2_38_aarch64" not in tags  # needs a newer glibc than bookworm has
    assert "linux_aarch64" not in tags  # what a local sdist build is tagged with
    assert not any("x86_64" in t for t in tags)
    assert "manylinux1_x86_64" in parse_platform("linux/amd64").wheel_platform_tags()


@pytest.mark.parametrize("text,fragment", [
    ("windows/amd64", "only linux"), ("linux/riscv64", "unknown architecture 'riscv64'"),
    ("linux/arm/v7", "unknown architecture"), ("", "empty platform"), ("darwin/arm64", "only linux"),
])
def test_bad_platforms_are_config_errors(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_platform(text)
    assert fragment in info.value.message
    assert "linux/amd64" in info.value.hint


def test_parse_platforms_sorts_and_dedupes():
    assert parse_platforms("linux/arm64, x86_64,linux/amd64") == (
        Platform("linux", "amd64"), Platform("linux", "arm64"))
    assert parse_platforms(["aarch64"]) == (Platform("linux", "arm64"),)
    with pytest.raises(ConfigError):
        parse_platforms("")


def test_host_is_a_supported_platform():
    assert str(Platform.host()) in ("linux/amd64", "linux/arm64")
