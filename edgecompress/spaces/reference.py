"""The model-reference grammar (no torch here: configs parse it, evaluators/model_ref.py builds from it).

    resnet8 (the zoo) | torchvision:NAME | timm:NAME | package.module:factory
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edgecompress.errors import ConfigError, ModelError

RESERVED = ("torchvision", "timm")


def kind_of(ref: str) -> str:
    """'zoo', 'torchvision', 'timm' or 'import' (a `package.module:attr` factory)."""
    if ":" not in ref:
        return "zoo"
    prefix = ref.split(":", 1)[0]
    return prefix if prefix in RESERVED else "import"


def reference_of(obj: str | Callable[..., Any]) -> str:
    """The reference string of `obj` (a string is checked for form; a callable must be importable by its
    qualified name, so that spawned trial processes can import it)."""
    if isinstance(obj, str):
        if ":" in obj:
            left, right = obj.split(":", 1)
            if not left or not right or any(not p.isidentifier() for p in left.split(".") + right.split(".")):
                raise ConfigError(f"model.name {obj!r}: expected a zoo name, 'torchvision:NAME', 'timm:NAME' or "
                                  f"'package.module:factory'")
        return obj
    if not callable(obj):
        raise ConfigError(f"model.name {obj!r}: expected a reference string or an importable callable")
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    how = ("define it at the top level of an importable module (a .py file on sys.path, not __main__ or a "
           "notebook) and pass it, or its 'package.module:name' string")
    if not module or module == "__main__" or "<" in qual:
        raise ConfigError(f"model.name {getattr(obj, '__name__', obj)!r} (from {module}) cannot be imported by "
                          f"trial processes: {how}")
    try:
        found = resolve(module, qual)
    except ModelError:
        found = None
    if found is not obj:
        raise ConfigError(f"model.name {module}.{qual} is not importable under that name: {how}")
    return f"{module}:{qual}"


def resolve(module_name: str, attr_path: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or the module itself raising
        raise ModelError(f"model {module_name}:{attr_path}: cannot import module {module_name!r} "
                         f"({type(e).__name__}: {e})") from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model {module_name}:{attr_path}: {module_name} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj


