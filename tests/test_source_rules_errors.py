"""Source rules for errors (issue 27), checked on every module under edgecompress/ with `ast`.

1. The library raises the project's error types (edgecompress/errors.py). `raise ValueError(...)` is left only
   inside a pydantic validator (a function decorated with `field_validator`, `model_validator`, `validator` or
   `root_validator`: pydantic turns it into a ValidationError), or as an argument check: the message's leading
   name (the first literal text, up to a space, ':' or the word "must") is a parameter of an enclosing function
   (for a method, also a field its class declares), e.g. `f"threads must be >= 1, got {threads}"` in
   `def f(threads)`.
2. Library error messages (every literal inside a `raise` of ValueError or of an EdgeCompressError subclass)
   name the Python argument, config field or file, not a CLI flag (`--storage`): the CLI (edgecompress/cli/,
   exempt) adds flag wording when it prints (`cli.base_cmd.with_flags`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgecompress

PACKAGE = Path(edgecompress.__file__).resolve().parent
VALIDATORS = {"field_validator", "model_validator", "validator", "root_validator"}
FLAG = re.compile(r"(?<![\w-])--[a-z]")  # " --storage", "(--force", or a message starting "--device"
LEADING_NAME = re.compile(r"[A-Za-z_]\w*")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _name(node: ast.AST) -> str | None:
    """`X` of `X`, `mod.X` or `X(...)` (a decorator or a raised class)."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _text(node: ast.AST) -> str:
    """A message expression as text: an f-string's values as {}, concatenations joined, anything else ''."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return ""


def _leading_literal(node: ast.AST) -> str:
    """The first literal text of a message: '' when it starts with a formatted value or is not a string."""
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _leading_literal(node.left)
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def leading_name(message: ast.AST | None) -> str | None:
    """`threads` of f"threads must be ...", `n` of "n: must be > 0"; None without a leading literal name."""
    m = LEADING_NAME.match(_leading_literal(message)) if message is not None else None
    return m.group(0) if m else None


def _error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """EdgeCompressError and every class under edgecompress/ deriving from it (by base-class name)."""
    names = {"EdgeCompressError"}
    while True:
        more = {node.name for tree in trees.values() for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef) and node.name not in names
                and any(_name(b) in names for b in node.bases)}
        if not more:
            return names
        names |= more


def _fields(cls: ast.ClassDef) -> set[str]:
    return {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = fn.args
    names = {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    return names | {p.arg for p in (a.vararg, a.kwarg) if p is not None}


def _raises(tree: ast.Module) -> Iterator[tuple[ast.Raise, list[ast.AST]]]:
    """Every `raise X(...)` with its enclosing classes and functions (outermost first)."""
    def walk(node: ast.AST, scope: list[ast.AST]) -> Iterator[tuple[ast.Raise, list[ast.AST]]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Raise) and child.exc is not None:
                yield child, scope
            inner = [*scope, child] if isinstance(child, (ast.ClassDef, ast.FunctionDef,
                                                          ast.AsyncFunctionDef)) else scope
            yield from walk(child, inner)
    yield from walk(tree, [])


def _in_validator(scope: list[ast.AST]) -> bool:
    return any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
               and any(_name(d) in VALIDATORS for d in s.decorator_list) for s in scope)


def _argument_names(scope: list[ast.AST]) -> set[str]:
    """The parameters of the enclosing functions (a closure checks its outer function's too), and for a method
    its class's declared fields (a dataclass's constructor arguments)."""
    names: set[str] = set()
    for i, fn in enumerate(scope):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names |= _params(fn)
            if i and isinstance(scope[i - 1], ast.ClassDef):
                names |= _fields(scope[i - 1])
    return names


def _message(exc: ast.AST) -> ast.AST | None:
    return exc.args[0] if isinstance(exc, ast.Call) and exc.args else None


def _literals(node: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal and f-string in an expression (an f-string once, as a whole)."""
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        yield node.lineno, _text(node)
        return
    for child in ast.iter_child_nodes(node):
        yield from _literals(child)


def value_error_violations(trees: dict[Path, ast.Module]) -> list[str]:
    out = []
    for path, tree in trees.items():
        for node, scope in _raises(tree):
            if _name(node.exc) != "ValueError" or _in_validator(scope):
                continue
            name = leading_name(_message(node.exc))
            if name is None or name not in _argument_names(scope):
                out.append(f"{_rel(path)}:{node.lineno}: raise ValueError outside a pydantic validator and not an "
                           f"argument check (message starts with {name!r}): raise a project error "
                           "(edgecompress/errors.py), or start the message with the bad parameter's name")
    return out


def flag_violations(trees: dict[Path, ast.Module]) -> list[str]:
    errors = _error_classes(trees) | {"ValueError"}
    out = []
    for path, tree in trees.items():
        if path.is_relative_to(PACKAGE / "cli"):
            continue
        for node, _scope in _raises(tree):
            if _name(node.exc) not in errors:
                continue
            for lineno, text in _literals(node.exc):
                if FLAG.search(text):
                    out.append(f"{_rel(path)}:{lineno}: CLI flag in a library error message: {text!r} "
                               "(name the argument or config field; the CLI adds flags)")
    return out


@pytest.fixture(scope="module")
def trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in _modules()}


def test_value_error_only_in_validators_and_argument_checks(trees: dict[Path, ast.Module]) -> None:
    bad = value_error_violations(trees)
    assert not bad, "\n".join(bad)


def test_library_error_messages_name_no_cli_flags(trees: dict[Path, ast.Module]) -> None:
    bad = flag_violations(trees)
    assert not bad, "\n".join(bad)


# ---- the rules themselves, on small sources ----------------------------------------------------------
def _check(src: str) -> tuple[list[str], list[str]]:
    trees = {PACKAGE / "fake.py": ast.parse(src)}
    return value_error_violations(trees), flag_violations(trees)


@pytest.mark.parametrize("src", [
    "def f(threads):\n    raise ValueError(f'threads must be >= 1, got {threads}')\n",
    "def f(n):\n    raise ValueError(f'n: must be > 0, got {n!r}')\n",
    "def f(*, low, high):\n    raise ValueError('low must be < high')\n",
    "from pydantic import field_validator\nclass C:\n    @field_validator('x')\n    @classmethod\n"
    "    def _x(cls, v):\n        raise ValueError('bad input')\n",
    "class P:\n    ratio: float\n    def __post_init__(self):\n        raise ValueError('ratio must be >= 1')\n",
    "def register(name):\n    def deco(fn):\n        raise ValueError(f'name {name!r} is taken')\n    return deco\n",
])
def test_allowed_value_errors(src: str) -> None:
    assert _check(src) == ([], [])


@pytest.mark.parametrize("src", [
    "def f(x):\n    raise ValueError('bad input')\n",
    "def f(x):\n    raise ValueError(f'{x}: bad')\n",
    "def f(x):\n    msg = 'x bad'\n    raise ValueError(msg)\n",
    "raise ValueError('x must be 1')\n",
    "def f(x):\n    def g(y):\n        raise ValueError('z must be 1')\n",
    "class P:\n    ratio: float\ndef f(y):\n    raise ValueError('ratio must be >= 1')\n",
])
def test_value_errors_that_break_the_rule(src: str) -> None:
    bad, _ = _check(src)
    assert len(bad) == 1 and bad[0].startswith("edgecompress/fake.py:"), bad


@pytest.mark.parametrize(("src", "n"), [
    ("class ConfigError(Exception): ...\ndef f(x):\n    raise ConfigError(f'--storage {x!r}: bad')\n", 1),
    ("class E(EdgeCompressError): ...\nclass F(E): ...\ndef f():\n    raise F('pass --force to write it')\n", 1),
    ("def f(x):\n    raise ValueError(f'x must be set (or use another --study name)')\n", 1),
    ("def f(x):\n    raise EdgeCompressError(f'{x}: give `storage`; run `edgecompress finalize`')\n", 0),
    ("def f(x):\n    raise KeyError('--storage')\n", 0),
])
def test_flag_rule(src: str, n: int) -> None:
    _, bad = _check(src.replace("ConfigError(Exception)", "ConfigError(EdgeCompressError)"))
    assert len(bad) == n, bad
