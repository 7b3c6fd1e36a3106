"""The artefact store given as an fsspec URL (`--artefacts s3://bucket/ec`, `file:///mnt/x`, `memory://ec`).

A folder path (the default: the runs folder) is used as it always was: trials write into
<store>/<study>/trials/<n>/ and record that folder as `artefact_dir`. A URL (any protocol fsspec opens) is
not written in place: a trial writes its artefacts into its local trial folder under the runs folder
(`artefact_dir`), then `upload` copies them to <store>/<study>/trials/<n>/ and the trial records that as
`artefact_uri`. Readers (export, cascade, the config-hash cache) call `local_folder`: the recorded folder
when it is readable here, else a copy fetched from `artefact_uri` into <runs>/store-cache/<hash>/.

Uploads are atomic for readers: every file goes first, then the marker `_COMPLETE` (JSON: file names and
sizes) last; a folder without the marker, or whose files differ from it, is a half upload and never used.
Fetched copies are staged in a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgeCompressError
from edgecompress.study import attrs as A
from edgecompress.utils import replace_dir, runs_dir, stable_hash

MARKER = "_COMPLETE"
RECORD_FILES = ("config.yaml", "metrics.json")  # evaluators.result.ARTEFACT_FILES' records, not artefacts
STORE_ENV = "EDGECOMPRESS_ARTEFACTS"


def is_url(store: str | os.PathLike[str] | None) -> bool:
    """Whether an artefact store setting is an fsspec URL (protocol://...) rather than a folder path."""
    return isinstance(store, str) and "://" in store


def store_url() -> str | None:
    """This process's artefact store when it is a URL (the driver's --artefacts, passed to every worker)."""
    value = os.environ.get(STORE_ENV) or None
    return value.rstrip("/") if is_url(value) else None


def trial_uri(store: str, study_name: str, number: int | str, kind: str = "trials") -> str:
    """<store>/<study>/<kind>/<n>: where a trial's artefacts go in a URL store (kind "ray": a Ray trial's
    upload before the driver numbers it)."""
    return f"{store.rstrip('/')}/{study_name}/{kind}/{number}"


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:  # an unknown protocol, or its package (s3fs, gcsfs) missing
        raise EdgeCompressError(f"artefact store {uri}: {e}".splitlines()[0]) from None


def upload(folder: Path, uri: str) -> str:
    """Copy the files of `folder` to `uri` (the marker last) and return `uri`; a one-line EdgeCompressError
    naming the store when it fails."""
    fs, root = _fs(uri)
    files = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file()}
    try:
        if fs.exists(f"{root}/{MARKER}"):
            fs.rm_file(f"{root}/{MARKER}")  # a re-upload: invalid until complete again
        fs.makedirs(root, exist_ok=True)
        for name in files:
            fs.put_file(str(Path(folder) / name), f"{root}/{name}")
        fs.pipe_file(f"{root}/{MARKER}", json.dumps({"files": files}).encode())
    except OSError as e:
        raise EdgeCompressError(f"cannot upload {folder} to {uri}: {e}".splitlines()[0]) from None
    return uri


def manifest(uri: str) -> dict[str, int] | None:
    """The files (name -> size) of a complete upload at `uri`; None when it is missing or half uploaded."""
    try:
        fs, root = _fs(uri)
        files = json.loads(fs.cat_file(f"{root}/{MARKER}"))["files"]
    except (OSError, ValueError, KeyError, TypeError, EdgeCompressError):
        return None
    return {str(k): int(v) for k, v in files.items()}


def fetch(uri: str, cache: Path | None = None) -> Path | None:
    """A local copy of the complete upload at `uri` (fetched once into `cache`, default
    <runs>/store-cache/<hash of uri>); None when there is no complete upload there."""
    files = manifest(uri)
    if files is None:
        return None
    target = Path(cache) if cache is not None else runs_dir().absolute() / "store-cache" / stable_hash(uri, 16)
    if _matches(target, files):
        return target
    fs, root = _fs(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in files:
            fs.get_file(f"{root}/{name}", str(staging / name))
        if not _matches(staging, files):
            return None  # changed while fetched: not a complete upload
        replace_dir(staging, target)
    except OSError:
        return None
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return target


def _matches(folder: Path, files: Mapping[str, int]) -> bool:
    return folder.is_dir() and all((folder / n).is_file() and (folder / n).stat().st_size == s
                                   for n, s in files.items())


def remove(uri: str) -> None:
    """Delete an upload (a Ray trial's, once the driver has stored it under its number); errors ignored."""
    try:
        fs, root = _fs(uri)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    except (OSError, EdgeCompressError):
        pass


def local_folder(attrs: Mapping[str, Any]) -> Path | None:
    """A folder on this machine holding a trial's artefacts: its `artefact_dir` when readable here (with more
    than its records in it, when there is an upload to prefer), else its `artefact_uri` fetched from the
    store; None when neither is available. `attrs`: the trial's user attrs (or a study-frame row)."""
    folder, uri = attrs.get(A.ARTEFACT_DIR), _str(attrs.get(A.ARTEFACT_URI))
    if _str(folder) and Path(folder).is_dir() and (uri is None or _has_artefacts(Path(folder))):
        return Path(folder)
    return fetch(uri) if uri else None


def available(attrs: Mapping[str, Any]) -> bool:
    """Whether `local_folder` would find the artefacts (without fetching them)."""
    folder, uri = attrs.get(A.ARTEFACT_DIR), _str(attrs.get(A.ARTEFACT_URI))
    if _str(folder) and Path(folder).is_dir() and (uri is None or _has_artefacts(Path(folder))):
        return True
    return uri is not None and manifest(uri) is not None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _has_artefacts(folder: Path) -> bool:
    """Artefacts in a trial folder, not only its records (config.yaml, metrics.json)."""
    return any(p.name not in RECORD_FILES for p in folder.iterdir())
