"""Find and check the model's entrypoint by reading its source (AST), never importing it.

Importing user code on the host would run it with the host's packages (which may be missing or
different) and could have side effects; the builder only needs to know that the name exists.

The rule (shared with the runtime worker, see docs/internals.md): ``entrypoint = "module:attr"``.
When unset: module ``predict``; attr ``Model`` if predict.py defines a class ``Model``, else
``predict``.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._errors import EntrypointError

__all__ = ["Entrypoint", "find_entrypoint", "parse_entrypoint", "module_file"]

DEFAULT_MODULE = "predict"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRYPOINT_RE = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")

Kind = Literal["class", "function", "async function", "variable", "import"]


@dataclass(frozen=True)
class Entrypoint:
    module: str
    attr: str
    file: Path  # absolute path of the module's source
    kind: Kind  # what the top-level name is bound to, as far as the AST tells
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


def parse_entrypoint(text: str) -> tuple[str, str]:
    """Split ``"module:attr"``; raise ValueError with the rule when the text does not match."""
    m = _ENTRYPOINT_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(
            f"{text!r} is not 'module:attr' (a dotted module path, a colon, a Python name), "
            "e.g. 'predict:Model'"
        )
    return m.group(1), m.group(2)


def module_file(directory: Path, module: str) -> Path | None:
    """Source file of ``module`` inside the model directory (a .py module or a package)."""
    base = directory.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(tree: ast.Module) -> dict[str, tuple[Kind, int]]:
    """Names bound at module level, with what binds them. Later bindings win, as at run time.
    Names bound inside ``if``/``try`` blocks count too (e.g. an optional import fallback)."""
    names: dict[str, tuple[Kind, int]] = {}

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                names[node.name] = ("class", node.lineno)
            elif isinstance(node, ast.AsyncFunctionDef):
                names[node.name] = ("async function", node.lineno)
            elif isinstance(node, ast.FunctionDef):
                names[node.name] = ("function", node.lineno)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name):
                            names[sub.id] = ("variable", node.lineno)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name != "*":
                        bound = alias.asname or alias.name.split(".")[0]
                        names[bound] = ("import", node.lineno)
            elif isinstance(node, (ast.If, ast.Try, ast.With)) or type(node).__name__ == "TryStar":
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [])
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


def _parse(file: Path) -> ast.Module:
    try:
        source = file.read_bytes()
    except OSError as exc:
        raise EntrypointError(
            f"cannot read {file}: {exc.strerror}", hint="check the file's permissions"
        ) from None
    try:
        return ast.parse(source, filename=str(file))
    except SyntaxError as exc:
        raise EntrypointError(
            f"{file}:{exc.lineno}: syntax error: {exc.msg}",
            hint="fix the syntax error; the entrypoint module must be valid Python",
        ) from None
    except ValueError as exc:  # e.g. null bytes in the source
        raise EntrypointError(f"{file}: not a Python source file: {exc}") from None


def find_entrypoint(directory: Path, entrypoint: str | None, *, source: str = "default") -> Entrypoint:
    """Resolve ``entrypoint`` (or the default rule) in ``directory`` and check that it exists.

    ``source`` says where the value came from (a config file and key) for error messages.
    """
    if entrypoint is None:
        module, attr = DEFAULT_MODULE, None
    else:
        try:
            module, attr = parse_entrypoint(entrypoint)
        except ValueError as exc:
            raise EntrypointError(
                f"{source}: bad entrypoint: {exc}",
                hint="write entrypoint = \"predict:Model\" (module file predict.py, name Model)",
            ) from None

    file = module_file(directory, module)
    if file is None:
        expected = directory.joinpath(*module.split(".")).with_suffix(".py")
        if entrypoint is None:
            raise EntrypointError(
                f"{expected} not found: a model directory needs a predict.py",
                hint="add predict.py defining `def predict(x)` or `class Model` with "
                "`load()` and `predict(x)`, or set `entrypoint = \"module:attr\"` in mlbuild.toml",
            )
        raise EntrypointError(
            f"{source}: entrypoint module {module!r} not found (looked for {expected})",
            hint=f"create {expected.name} or fix the entrypoint",
        )

    names = _top_level_names(_parse(file))
    if attr is None:
        # Default rule: a class Model wins over a function predict.
        attr = "Model" if names.get("Model", (None,))[0] == "class" else "predict"
        if attr not in names:
            raise EntrypointError(
                f"{file}: defines neither a class `Model` nor a function `predict`",
                hint="define `def predict(x)` or `class Model` (with `predict(self, x)`), or set "
                "`entrypoint = \"module:attr\"` in mlbuild.toml",
            )
    elif attr not in names:
        close = difflib.get_close_matches(attr, sorted(names), n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise EntrypointError(
            f"{source}: entrypoint {module}:{attr}: {file.name} defines no top-level name "
            f"{attr!r}{suggestion}",
            hint=f"define {attr} at the top level of {file.name} or fix the entrypoint",
        )
    kind, line = names[attr]
    return Entrypoint(module=module, attr=attr, file=file, kind=kind, line=line)
