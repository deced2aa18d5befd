"""The `mlbuild` command line: a thin layer over the Python API.

``main()`` prints errors and exits with the error class's code (see ``_errors``);
``main_inner()`` raises, so tests and embedders see the exception itself.
Heavy modules (docker SDK, pydantic, jinja2) are imported inside commands, so that
``mlbuild --help`` and a code-only rebuild do not pay for what they do not use.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from ._errors import MlbuildError
from ._version import __version__

_PLATFORM_HELP = "Target platform(s), e.g. linux/amd64 or linux/amd64,linux/arm64."


def _split_platforms(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _progress(quiet: bool):
    if quiet:
        return None
    return lambda line: click.echo(line, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlbuild")
def cli() -> None:
    """Turn a Python model directory into one self-contained, reproducible container image."""


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Model name (default: the directory's name).")
def init(directory: Path, name: str | None) -> None:
    """Scaffold a model directory: predict.py, requirements.txt, mlbuild.toml."""
    from ._scaffold import scaffold

    created = scaffold(directory, name=name)
    for path in created:
        click.echo(f"created {path}")
    click.echo(f"next: edit {directory / 'predict.py'}, then `mlbuild image {directory}`")


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--python", "python", help="Target Python version, e.g. 3.11 (default: the spec's).")
@click.option("--platform", "platform", default="linux/amd64", show_default=True, help=_PLATFORM_HELP)
@click.option("--resolver", type=click.Choice(["uv", "pip-tools"]), default="uv", show_default=True)
def lock(directory: Path, python: str | None, platform: str, resolver: str) -> None:
    """Resolve the model's requirements into mlbuild.lock (exact versions + sha256 hashes)."""
    from ._api import lock as lock_api

    result = lock_api(directory, python=python, platforms=_split_platforms(platform), resolver=resolver)
    click.echo(f"wrote {result.path} ({len(result.packages)} packages, {result.digest})")


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", "base_image", help="Base image (default: python:<version>-slim).")
def dockerfile(directory: Path, base_image: str | None) -> None:
    """Print the Dockerfile mlbuild renders for DIRECTORY (writing mlbuild.lock first if it is
    absent, as `mlbuild image` would: the lock's digest is one of the image's labels)."""
    from ._backends.docker import dockerfile_for

    click.echo(dockerfile_for(directory, base_image=base_image), nl=False)


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-t", "--tag", help="Image tag (default: <name>:<version>).")
@click.option("--base", "base_image", help="Base image (default: python:<version>-slim).")
@click.option("--platform", "platform", default="linux/amd64", show_default=True, help=_PLATFORM_HELP)
@click.option("--python", "python", help="Target Python version (default: the spec's).")
@click.option(
    "--backend",
    type=click.Choice(["auto", "docker", "oci"]),
    default="auto",
    show_default=True,
    help="docker: the Docker engine; oci: assembled in Python, no engine; auto: docker if one answers.",
)
@click.option("--output", "output", type=click.Path(path_type=Path), help="oci: write an OCI layout DIR or a FILE.tar.")
@click.option("--push", "push", help="oci: push to this registry reference.")
@click.option("--load", "load", is_flag=True, help="oci: load the result into the local engine.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result on stdout.")
def image(
    directory: Path,
    tag: str | None,
    base_image: str | None,
    platform: str,
    python: str | None,
    backend: str,
    output: Path | None,
    push: str | None,
    load: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a locked, hermetic image from the model DIRECTORY."""
    from ._api import build_image

    result = build_image(
        directory,
        tag=tag,
        base_image=base_image,
        platform=platform,
        python=python,
        backend=backend,
        output=output,
        push=push,
        load=load,
        progress=_progress(quiet or as_json),
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    elif not quiet:
        click.echo(result.summary())
    else:
        click.echo(result.tag or result.image_id)


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default=None, help="Interface to bind (default 0.0.0.0, or MLBUILD_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8080, or MLBUILD_PORT).")
@click.option("--workers", type=int, default=None, help="Model worker processes (default 1).")
@click.option("--isolated", is_flag=True, help="Run workers in a venv made from the model's lock.")
def serve(directory: Path, host: str | None, port: int | None, workers: int | None, isolated: bool) -> None:
    """Serve the model on this host: the HTTP server in mlbuild's environment, workers in the
    current interpreter (or, with --isolated, in a venv built from mlbuild.lock)."""
    from ._serve import serve as serve_api

    raise SystemExit(serve_api(directory, host=host, port=port, workers=workers, isolated=isolated))


@cli.command()
@click.argument("target")
@click.option("--input", "input_json", required=True, help="The input, as JSON.")
@click.option("--isolated", is_flag=True, help="DIR only: run in a venv built from the model's lock.")
def predict(target: str, input_json: str, isolated: bool) -> None:
    """Print one prediction from a model DIR (no HTTP) or an IMAGE (started, asked, stopped)."""
    from ._serve import predict_once

    click.echo(predict_once(target, input_json, isolated=isolated))


@cli.command()
@click.argument("image_ref", metavar="IMAGE")
@click.option("-p", "--port", type=int, default=None, help="Host port (default: a free one).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for readiness.")
def run(image_ref: str, port: int | None, timeout: float) -> None:
    """Start IMAGE locally, wait until /health/ready answers 200, print the URL."""
    from ._run import run_image

    running = run_image(image_ref, port=port, timeout=timeout)
    click.echo(f"ready: {running.url}  (container {running.container_id[:12]}; stop: docker rm -f {running.container_id[:12]})", err=True)
    click.echo(running.url)


def main_inner(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; MlbuildError propagates. Returns the exit code of a normal run."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="mlbuild", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help / --version
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: errors become one clear message and the class's exit code."""
    try:
        code = main_inner(argv)
    except MlbuildError as exc:
        click.echo(exc.render(), err=True)
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
