"""Trial-attribute names are spelled in one module: edgecompress/study/attrs.py (issue 27).

Everything else reads and writes trial user attributes through edgecompress.study.TrialRecord or the attrs
constants (A.LATENCY_SOURCE, ...), frame columns named after an attribute included. This test parses every
module under edgecompress/ but attrs.py with `ast` and fails, naming file:line, for a string constant (a
piece of an f-string included) equal to a trial-attribute name (the stored names of TrialRecord.fields())
where:

1. the name is unambiguous (every name but the generic words config, violations, fidelity and enqueued):
   flagged wherever it occurs: a user-attr key, a frame column, an export's metadata key, a dict key of a
   table row, since each is that attribute under its stored name;
2. the constant is "user_attrs_<name>" (a column of Optuna's trials_dataframe), or <name> is added to a
   constant ending in "user_attrs_" ("user_attrs_" + "config"): any name;
3. a name, generic ones included, is used as a trial attribute:
   - the key of a subscript, of an `in` / `not in` test or of .get / .pop / .setdefault on a user-attrs
     expression;
   - the first argument of any `set_user_attr(...)`;
   - a key of a dict literal passed as `user_attrs=`, assigned to a user-attrs name or given to .update() of
     one, and a keyword of .update() on one (`attrs.update(config=...)`: an identifier, but the same spelling);
   a user-attrs expression is `<x>.user_attrs`, a name ending in `user_attrs`, `dict(<one>)`, `<one>.copy()`,
   `{**<one>, ...}`, or a name that, in the same function (or at module level), is assigned one of those or
   is passed as `user_attrs=<name>` (create_trial, enqueue_trial).
A generic word elsewhere (FILES["config"] of an export folder, a report's info["fidelity"], the `violations`
function in an __all__) is not a trial attribute and passes. Docstrings are never exactly a name, and
comments are not in the AST: prose may name attributes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgecompress
from edgecompress.study import attrs as A
from edgecompress.study.record import TrialRecord

ROOT = Path(edgecompress.__file__).parent
HOME = ROOT / "study" / "attrs.py"  # the one module that spells the names
NAMES = frozenset(TrialRecord.fields().values())
GENERIC = frozenset({A.CONFIG, A.VIOLATIONS, A.FIDELITY, A.ENQUEUED})
UNAMBIGUOUS = NAMES - GENERIC
PREFIX = "user_attrs_"  # Optuna's trials_dataframe column prefix
KEY_METHODS = {"get", "pop", "setdefault"}


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one scope: a module or function body, without the bodies of functions defined in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend(ast.iter_child_nodes(node))


def _is_ua(node: ast.AST | None, names: set[str]) -> bool:
    """Whether an expression is a trial's user attrs (module docstring, rule 3)."""
    if isinstance(node, ast.Attribute):
        return node.attr.endswith("user_attrs")
    if isinstance(node, ast.Name):
        return node.id.endswith("user_attrs") or node.id in names
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id == "dict" and len(node.args) == 1:
            return _is_ua(node.args[0], names)
        if isinstance(f, ast.Attribute) and f.attr == "copy" and not node.args:
            return _is_ua(f.value, names)
    if isinstance(node, ast.Dict):
        return any(k is None and _is_ua(v, names) for k, v in zip(node.keys, node.values, strict=True))
    return False


def _ua_names(scope: ast.AST) -> set[str]:
    """Names that hold a trial's user attrs in this scope (assigned one, or passed as user_attrs=)."""
    names: set[str] = set()
    nodes = list(_scope_nodes(scope))
    while True:
        before = len(names)
        for node in nodes:
            if isinstance(node, ast.Assign) and _is_ua(node.value, names):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _is_ua(node.value, names):
                names.add(node.target.id)
            elif isinstance(node, ast.keyword) and node.arg == "user_attrs" and isinstance(node.value, ast.Name):
                names.add(node.value.id)
        if len(names) == before:
            return names


def _dict_keys(node: ast.AST | None) -> Iterator[ast.AST]:
    if isinstance(node, ast.Dict):
        yield from (k for k in node.keys if k is not None)


def violations_in(source: str, filename: str = "<src>") -> list[str]:
    """'file:line: why' for each use of a trial-attribute name as a literal (module docstring)."""
    tree = ast.parse(source, filename)
    found: dict[tuple[int, int], str] = {}  # (line, column) -> the first rule that flagged it

    def flag(node: ast.AST, why: str) -> None:
        found.setdefault((getattr(node, "lineno", 0), getattr(node, "col_offset", 0)), why)

    for node in ast.walk(tree):  # rules 1 and 2
        s = _str(node)
        if s in UNAMBIGUOUS:
            flag(node, f"{s!r} is a trial-attribute name")
        elif s is not None and s.startswith(PREFIX) and s[len(PREFIX):] in NAMES:
            flag(node, f"{s!r} is the frame column of a trial attribute")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = _str(node.left), _str(node.right)
            if left is not None and left.endswith(PREFIX) and right in NAMES:
                flag(node.right, f"{left!r} + {right!r} is the frame column of a trial attribute")

    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]
    for scope in scopes:  # rule 3
        ua = _ua_names(scope)

        def key(node: ast.AST | None, how: str) -> None:
            s = _str(node)
            if s in NAMES:
                flag(node, f"{s!r} used as a trial attribute ({how})")

        for node in _scope_nodes(scope):
            if isinstance(node, ast.Subscript) and _is_ua(node.value, ua):
                key(node.slice, "user-attrs subscript")
            elif isinstance(node, ast.Compare) and _is_ua(node.comparators[0], ua) and isinstance(
                    node.ops[0], (ast.In, ast.NotIn)):
                key(node.left, "`in` user attrs")
            elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
                fname = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                on_ua = isinstance(node.func, ast.Attribute) and _is_ua(node.func.value, ua)
                if fname == "set_user_attr" and node.args:
                    key(node.args[0], "set_user_attr")
                elif on_ua and fname in KEY_METHODS and node.args:
                    key(node.args[0], f"user attrs .{fname}()")
                elif on_ua and fname == "update":
                    for arg in node.args:
                        for k in _dict_keys(arg):
                            key(k, "user attrs .update()")
                    for kw in node.keywords:
                        if kw.arg in NAMES:
                            flag(kw, f"{kw.arg!r} used as a trial attribute (user attrs .update() keyword)")
                for kw in node.keywords:
                    if kw.arg == "user_attrs":
                        for k in _dict_keys(kw.value):
                            key(k, "user_attrs= dict")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(_is_ua(t, ua) for t in targets if isinstance(t, ast.Name)):
                    for k in _dict_keys(node.value):
                        key(k, "user-attrs dict")
    return [f"{filename}:{line}: {why}" for (line, _), why in sorted(found.items())]


def library_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p != HOME)


def test_trial_attribute_names_are_spelled_in_attrs_only() -> None:
    bad = []
    for path in library_modules():
        bad += violations_in(path.read_text(), str(path.relative_to(ROOT.parent)))
    assert not bad, ("trial-attribute names written as literals (use edgecompress.study.TrialRecord or the "
                     "edgecompress.study.attrs constants):\n" + "\n".join(bad))


def test_the_record_has_every_trial_attribute_of_attrs() -> None:
    """TrialRecord has a property for each constant of attrs.py's trial section (so the scan knows every name)."""
    text = HOME.read_text()
    section = text[text.index("# ---- trial user attributes"):text.index("# ---- finalized studies")]
    declared = set(re.findall(r'^[A-Z_]+ = "([a-z0-9_]+)"', section, flags=re.M))
    assert declared == set(NAMES)


@pytest.mark.parametrize("src", [
    'trial.user_attrs["latency_source"]',
    'x = t.user_attrs.get("config")',
    'def f(t):\n    ua = t.user_attrs\n    return ua["config"]',
    'def f(t):\n    attrs = dict(t.user_attrs)\n    attrs["fidelity"] = "final"',
    'def f(t):\n    a = {**t.user_attrs}\n    return "violations" in a',
    'trial.set_user_attr("config", {})',
    'study.enqueue_trial(p, user_attrs={"fidelity": "final"})',
    'def f():\n    attrs = {"config": 1}\n    create_trial(user_attrs=attrs)',
    'def f():\n    attrs = {}\n    attrs.update(config=1)\n    create_trial(user_attrs=attrs)',
    'df["user_attrs_config"]',
    'col = "user_attrs_" + "fidelity"',
    'row = {"state_detail": "complete"}',
    'msg = f"{row[\'latency_source\']}"',
    'KEYS = ("weights_sha256",)',
])
def test_the_scan_flags(src: str) -> None:
    assert violations_in(src)


@pytest.mark.parametrize("src", [
    'FILES = {"config": "config.yaml"}',
    'meta.get("config")',
    'info["fidelity"] = "final"',
    '__all__ = ["violations"]',
    'def f(t):\n    ua = t.user_attrs\n\ndef g(ua):\n    return ua["config"]',  # another function's `ua`
    'trial.user_attrs[A.LATENCY_SOURCE]',
    'col = "user_attrs_" + A.CONFIG',
    '"""The "config" and latency_source attributes."""',
])
def test_the_scan_passes(src: str) -> None:
    assert violations_in(src) == []
