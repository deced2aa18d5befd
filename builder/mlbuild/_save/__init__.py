"""mlbuild.save(): turn a live Python object into a complete model directory.

What it writes (the usual model directory contract, nothing special downstream)::

    <dir>/
      predict.py               generated: class Model, load() unpickles the payload once
      requirements.txt         inferred pins (name==version running now), cloudpickle included
      mlbuild.toml             name, python (the running minor version), entrypoint
      artifacts/model.pkl      the object, cloudpickled; __main__ and the user's own modules by value
      artifacts/payload.json   what the payload needs at load: python, cloudpickle, sha256

Requirements: inferred ones come from what the pickle references (see _save/_requirements.py).
An explicit ``requirements=`` list EXTENDS them; an explicit line that names a distribution we
inferred REPLACES that inferred pin (so ``requirements=["scikit-learn>=1.5"]`` loosens it).

The write is atomic: everything goes to a temp dir beside the target, which is then renamed
into place; a non-empty existing target is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .._errors import SaveError
from .._values import NAME_RE, sanitize_name  # one naming rule for saved and hand-written models
from .._version import __version__
from ._predict import Entry, describe_entry, render_predict
from ._requirements import analyse_and_pickle
from ._unpicklable import find_unpicklable

__all__ = [
    "SaveError",
    "SavedModel",
    "save",
    "check_python_arg",
    "check_payload_python",
    "read_payload_info",
    "PAYLOAD_NAME",
    "PAYLOAD_INFO_NAME",
]

PAYLOAD_NAME = "artifacts/model.pkl"
PAYLOAD_INFO_NAME = "artifacts/payload.json"
_PYTHON_RE = re.compile(r"3\.[0-9]{1,2}")


@dataclass(frozen=True)
class SavedModel:
    """What save() wrote."""

    path: Path
    name: str
    python: str
    requirements: tuple[str, ...]  # the lines of requirements.txt, in order
    by_value_modules: tuple[str, ...]  # user modules captured inside the payload (besides __main__)
    entry: Entry


def _running_python() -> str:
    return "%d.%d" % sys.version_info[:2]


def _default_name(obj: object) -> str:
    raw = getattr(obj, "__name__", None) if callable(obj) and not hasattr(obj, "predict") else None
    raw = raw or type(obj).__name__
    # CamelCase -> camel-case, then anything outside the image-name alphabet -> "-".
    return sanitize_name(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", raw))


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise SaveError(
            f"mlbuild.save(): {path} exists and is not a directory",
            hint="choose a directory path for the model",
        )
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SaveError(
            f"mlbuild.save(): {path} already exists and is not empty",
            hint="pass overwrite=True to replace it, or choose another directory",
        )
    if not path.parent.is_dir():
        raise SaveError(
            f"mlbuild.save(): the parent directory {path.parent} does not exist",
            hint="create it first; save() creates only the last path component",
        )


def check_python_arg(python: str | None) -> str:
    running = _running_python()
    if python is None:
        return running
    if not isinstance(python, str) or not _PYTHON_RE.fullmatch(python):
        raise SaveError(
            f"mlbuild.save(): python={python!r} is not a minor version like \"{running}\"",
            hint=f"pass python=\"{running}\" or leave it out",
        )
    if python != running:
        raise SaveError(
            f"mlbuild.save(): python=\"{python}\" differs from the running Python {running}",
            hint=f"a pickle only loads on the Python minor version that wrote it: save from a "
            f"Python {python} session, or leave python= out to target {running}",
        )
    return python


def _merge_requirements(inferred: dict[str, str], explicit: Sequence[str] | None) -> tuple[str, ...]:
    lines = {canonicalize_name(name): f"{name}=={version}" for name, version in inferred.items()}
    if explicit is None:
        return tuple(lines[k] for k in sorted(lines))
    if isinstance(explicit, (str, bytes)):
        raise SaveError(
            "mlbuild.save(): requirements= must be a list of requirement strings, not one string",
            hint='e.g. requirements=["scikit-learn==1.5.2", "lightgbm>=4"]',
        )
    for index, text in enumerate(explicit):
        try:
            req = Requirement(str(text))
        except InvalidRequirement as exc:
            raise SaveError(
                f"mlbuild.save(): requirements[{index}] = {text!r} is not a valid requirement",
                hint=f"write it as in requirements.txt, e.g. \"numpy==2.1.0\" ({exc})",
            ) from None
        key = canonicalize_name(req.name)
        if key == "cloudpickle":
            pinned = f"=={cloudpickle.__version__}"
            if str(req.specifier) != pinned:
                raise SaveError(
                    f"mlbuild.save(): requirements[{index}] = {text!r} would not install cloudpickle "
                    f"{cloudpickle.__version__}, which wrote the payload",
                    hint=f"leave cloudpickle out of requirements= (save pins cloudpickle{pinned})",
                )
        lines[key] = str(req)
    return tuple(lines[k] for k in sorted(lines))


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of printable text is a valid TOML basic string


def _object_path(obj: object) -> str:
    target = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(obj).__name__)}"


def _explain_pickling_failure(obj: object, exc: BaseException) -> SaveError:
    found = find_unpicklable(obj)
    if found is None:  # pickles alone yet failed in analysis: report the original error
        return SaveError(
            f"mlbuild.save(): the object could not be pickled: {type(exc).__name__}: {exc}",
            hint="make the object picklable (drop open resources in __getstate__)",
        )
    return SaveError(
        f"mlbuild.save(): cannot pickle {found.path} (a {found.type_name}): "
        f"{type(found.error).__name__}: {found.error}",
        hint=f"open files, locks, sockets and connections cannot travel in a payload: set "
        f"{found.path} to None before saving, or drop it in __getstate__ and reopen it lazily",
    )


def _write_tree(
    tmp: Path,
    *,
    payload: bytes,
    predict_source: str,
    requirements: Sequence[str],
    name: str,
    python: str,
    info: dict[str, Any],
) -> None:
    (tmp / "artifacts").mkdir()
    (tmp / PAYLOAD_NAME).write_bytes(payload)
    (tmp / PAYLOAD_INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (tmp / "predict.py").write_text(predict_source)
    (tmp / "requirements.txt").write_text(
        f"# Inferred by mlbuild.save() from the running environment (Python {python}): the\n"
        "# distributions the saved object references, pinned to the versions that pickled it.\n"
        + "".join(line + "\n" for line in requirements)
    )
    (tmp / "mlbuild.toml").write_text(
        "# Written by mlbuild.save(). python must stay the minor version that pickled the payload.\n"
        f"name = {_toml_string(name)}\n"
        f"python = {_toml_string(python)}\n"
        'entrypoint = "predict:Model"\n'
    )


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename tmp to target; an existing target (empty, or overwrite=True) is moved aside first
    and removed only after the new tree is in place."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / target.name, target)  # put the old tree back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def save(
    obj: object,
    path: str | os.PathLike[str],
    *,
    requirements: Sequence[str] | None = None,
    python: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> SavedModel:
    """Write a model directory at ``path`` that serves ``obj.predict(x)`` (or ``obj(x)``).

    ``requirements`` extends the inferred pins; a line naming an inferred distribution replaces
    its pin. ``python`` must equal the running minor version (a pickle is tied to it); it is
    there so a script can assert the target. ``name`` defaults to the object's class name in
    kebab-case. Raises SaveError, with nothing written, when anything is wrong.
    """
    target = Path(path).absolute()
    target_python = check_python_arg(python)
    if name is None:
        name = _default_name(obj)
    elif not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SaveError(
            f"mlbuild.save(): name={name!r} is not a valid model name",
            hint="use lowercase letters and digits, parts joined by single '.', '_' or '-' (an image name)",
        )
    _check_target(target, overwrite)
    entry = describe_entry(obj)
    try:
        analysis = analyse_and_pickle(obj)
    except Exception as exc:  # noqa: BLE001 - every pickling failure gets located and explained
        raise _explain_pickling_failure(obj, exc) from exc
    try:
        # Some objects pickle but do not unpickle (a __reduce__ that lies); catch it now, here,
        # not at the image's first start.
        cloudpickle.loads(analysis.payload)
    except Exception as exc:  # noqa: BLE001
        raise SaveError(
            f"mlbuild.save(): the pickled object does not load back: {type(exc).__name__}: {exc}",
            hint="check the __reduce__/__setstate__ of the classes involved",
        ) from exc
    lines = _merge_requirements(analysis.distributions, requirements)
    sha256 = hashlib.sha256(analysis.payload).hexdigest()
    object_path = _object_path(obj)
    info = {
        "format": 1,
        "python": target_python,
        "python_full": "%d.%d.%d" % sys.version_info[:3],
        "cloudpickle": cloudpickle.__version__,
        "sha256": sha256,
        "object": object_path,
        "method": entry.method,
        "by_value_modules": list(analysis.by_value_modules),
        "mlbuild": __version__,
    }
    predict_source = render_predict(
        entry,
        object_path=object_path,
        payload_name=PAYLOAD_NAME,
        payload_sha256=sha256,
        python=target_python,
        cloudpickle_version=cloudpickle.__version__,
        mlbuild_version=__version__,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_tree(
            tmp,
            payload=analysis.payload,
            predict_source=predict_source,
            requirements=lines,
            name=name,
            python=target_python,
            info=info,
        )
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a model dir is an ordinary directory
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SavedModel(target, name, target_python, lines, analysis.by_value_modules, entry)


def read_payload_info(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """artifacts/payload.json of a saved model directory, or None for an ordinary one."""
    path = Path(model_dir) / PAYLOAD_INFO_NAME
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise SaveError(
            f"{path}: not valid JSON ({exc})", hint="save the model again with mlbuild.save()"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("python"), str):
        raise SaveError(f"{path}: no \"python\" key", hint="save the model again with mlbuild.save()")
    return info


def check_payload_python(model_dir: str | os.PathLike[str], target_python: str) -> None:
    """Refuse, before building, a target Python whose minor version differs from the one that
    pickled the payload. A directory without artifacts/payload.json passes (not a saved model).
    The build calls this with the spec's python (mlbuild.toml)."""
    info = read_payload_info(model_dir)
    if info is None:
        return
    saved = info["python"]
    if saved != target_python:
        raise SaveError(
            f"{Path(model_dir) / PAYLOAD_NAME} was pickled by Python {saved} but the build targets "
            f"Python {target_python}",
            hint=f"set python = \"{saved}\" in mlbuild.toml, or save the model again from a "
            f"Python {target_python} session",
        )
