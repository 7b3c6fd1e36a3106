"""Small shared helpers: stable hashing of configs, atomic file writes, seeding, JSON-friendly values."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash a JSON-serialisable object independently of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are meant to be shared like any file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a finished staging folder to `target`, replacing an existing folder there (rename, then delete
    the old one), so readers see either the old folder or the complete new one, never a half-written one."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def plain(v: Any, *, keep_nonfinite: bool = False, flat: bool = False) -> Any:
    """A JSON/YAML-friendly copy of `v` (user attributes, export configs, report data).

    numpy scalars become Python scalars and arrays lists; tuples and lists become lists and dicts dicts with
    str keys (recursively); str subclasses, Paths, timestamps and other objects become str; NaT and pd.NA
    become None. NaN and +-inf become None unless `keep_nonfinite` (Optuna's JSON storage keeps them).
    `flat`: a tuple, list or dict becomes the str of its plain form (one table cell or hover line).
    """
    if isinstance(v, np.ndarray):
        v = v.tolist()
    elif isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v if keep_nonfinite or math.isfinite(v) else None
    if isinstance(v, str):
        return str(v)  # str subclasses (numpy str_, torch's TorchVersion) are not yaml.safe_dump-able
    if isinstance(v, (tuple, list, dict)):
        if isinstance(v, dict):
            out: Any = {str(k): plain(x, keep_nonfinite=keep_nonfinite) for k, x in v.items()}
        else:
            out = [plain(x, keep_nonfinite=keep_nonfinite) for x in v]
        return str(out) if flat else out
    if isinstance(v, _dt.datetime) and v != v:  # pandas NaT: the one datetime unequal to itself
        return None
    if type(v).__name__ == "NAType":  # pandas.NA, without importing pandas here
        return None
    return str(v)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so training is reproducible on one machine."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def runs_dir() -> Path:
    """Where run artefacts go (studies, caches); EDGECOMPRESS_RUNS overrides ./runs."""
    return Path(os.environ.get("EDGECOMPRESS_RUNS", "runs"))


def artefacts_dir() -> Path:
    """Root of trial artefacts (<root>/<study>/trials/<n>/) and of the caches (<root>/cache/): the artefact
    store. EDGECOMPRESS_ARTEFACTS (the CLI's --artefacts, a folder every worker can reach) overrides runs_dir();
    when it is an fsspec URL (study.artefact_store), trials write under runs_dir() and upload to the URL."""
    store = os.environ.get("EDGECOMPRESS_ARTEFACTS")
    return Path(store) if store and "://" not in store else runs_dir()


def cache_dir() -> Path:
    """The base-model cache: under the artefact store, shared by every worker there (a study trains its base
    model once, under a file lock)."""
    return artefacts_dir() / "cache"


@dataclass(frozen=True)
class Locations:
    """The runs folder and the artefact store as absolute paths (the store may be an fsspec URL instead:
    study.artefact_store), resolved once by the search driver and
    handed to every worker process and Ray trial (whose working folder differs: Ray runs each trial in its
    own), so that all of them use the same base-model cache and write artefacts where export reads them."""

    runs: str
    artefacts: str

    @classmethod
    def resolve(cls, artefacts: str | os.PathLike[str] | None = None) -> Locations:
        """Absolute locations from the environment (or `artefacts`, the --artefacts option: a folder, or an
        fsspec URL that is kept as given)."""
        setting = str(artefacts) if artefacts else os.environ.get("EDGECOMPRESS_ARTEFACTS")
        if setting and "://" in setting:
            return cls(runs=str(runs_dir().absolute()), artefacts=setting.rstrip("/"))
        store = Path(artefacts) if artefacts else artefacts_dir()
        return cls(runs=str(runs_dir().absolute()), artefacts=str(store.expanduser().absolute()))

    def env(self) -> dict[str, str]:
        return {"EDGECOMPRESS_RUNS": self.runs, "EDGECOMPRESS_ARTEFACTS": self.artefacts}

    def apply(self) -> None:
        """Make this process use these locations (a worker process or Ray trial, at its start)."""
        os.environ.update(self.env())

    @contextlib.contextmanager
    def applied(self) -> Iterator[Locations]:
        """These locations for the duration of a `with` block (the driver: restored after the search)."""
        old = {k: os.environ.get(k) for k in self.env()}
        self.apply()
        try:
            yield self
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def as_float(v: Any) -> float:
    """`v` as a float, NaN when it is missing or not a number (table and frame cells)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def is_finite_number(v: Any) -> bool:
    """A real int/float (numpy included, bool excluded) that is finite."""
    import math

    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)


def read_format_yaml(path: str | os.PathLike[str], fmt: str, versions: tuple[Any, ...], what: str) -> dict[str, Any]:
    """A YAML document written by edgecompress with `format: fmt` and a readable `format_version`
    (one of `versions`); a one-line EdgeCompressError naming the file otherwise. `what` names the kind."""
    import yaml

    from edgecompress.errors import EdgeCompressError

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise EdgeCompressError(f"cannot read {what} {path}: {e}".splitlines()[0]) from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise EdgeCompressError(f"{path} is not an edgecompress {what}")
    if doc.get("format_version") not in versions:
        raise EdgeCompressError(f"{path}: {what} format version {doc.get('format_version')!r} is not one this "
                                f"edgecompress reads ({', '.join(map(str, versions))})")
    return doc
