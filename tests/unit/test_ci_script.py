"""CI runs exactly the test command README.md gives users, with CI=1 (no Docker test skips)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"Run the whole test suite.*?```sh\n(.+?)\n```", readme, re.DOTALL)
    assert match, "README.md must show the test command in a sh block after 'Run the whole test suite'"
    command = match.group(1).strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(command)}(\s|$)", ci, re.MULTILINE), command
    assert re.search(r"^export CI=1$", ci, re.MULTILINE)


def test_ci_installs_what_the_docker_and_registry_tests_use():
    ci = (REPO / ".ci" / "run").read_text()
    for package in ("docker.io", "debootstrap", "skopeo", "docker-registry", "apache2-utils"):
        assert package in ci, package
    assert "dockerd" in ci and "scripts/build-base-image.sh" in ci
    assert "-e '.[test]'" in ci
