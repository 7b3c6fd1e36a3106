"""Where a Ray trial's artefacts go, and how the driver gets them into <store>/<study>/trials/<number>/.

With a folder store every node shares, a trial writes under <store>/<study>/ray/<trial id>/ and the driver
moves the files into the numbered trial folder (as before). With an fsspec URL store (study.artefact_store),
the trial also uploads its folder to <store>/<study>/ray/<trial id>/; the driver, which may not see the
node's disk, takes the files from its own disk when it can, else fetches that upload, then uploads the
numbered trial folder to <store>/<study>/trials/<number>/ (recorded as `artefact_uri`) and deletes the
per-trial-id upload. A complete trial whose artefacts are in neither place is recorded FAIL by the driver.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from edgecompress.errors import EdgeCompressError
from edgecompress.search.objective import link_artefacts
from edgecompress.study import artefact_store
from edgecompress.study import attrs as A

URI_KEY = "ec_artefact_uri"  # in a Ray trial's final report: its upload to a URL store


def upload_trial_output(out: Path, study_name: str, trial_id: str) -> dict[str, Any]:
    """Trainable side: upload `out` when the store is a URL; the report keys saying where ({} otherwise).
    A failed upload is reported as None (the driver then relies on seeing `out` itself)."""
    store = artefact_store.store_url()
    if not store:
        return {}
    try:
        return {URI_KEY: artefact_store.upload(out, artefact_store.trial_uri(store, study_name, trial_id, "ray"))}
    except Exception:  # noqa: BLE001 - the driver records why it cannot find the artefacts
        return {URI_KEY: None}


def link_cached(source_attrs: dict[str, Any], folder: Path) -> None:
    """Driver side: the artefacts of the trial a cached Tune trial was served from, into its `folder`."""
    src = artefact_store.local_folder(source_attrs)
    if src is not None:
        link_artefacts(src, folder)


def collect(result: dict[str, Any], folder: Path) -> bool:
    """Driver side: bring a finished trial's artefacts into its numbered local `folder`: moved from the
    trial's output folder when the driver sees it, else fetched from the trial's upload. False: in neither."""
    src = Path(result.get("ec_artefacts") or "")
    if result.get("ec_artefacts") and src.is_dir():
        for f in src.iterdir():
            shutil.move(str(f), folder / f.name)
        shutil.rmtree(src, ignore_errors=True)
        return True
    uri = result.get(URI_KEY)
    if uri and artefact_store.fetch(uri, cache=folder) is not None:
        return True
    return False


def publish(folder: Path, study_name: str, number: int, result: dict[str, Any]) -> str | None:
    """Driver side, after the trial's files are complete in `folder`: upload it to the URL store's numbered
    trial folder and drop the per-trial-id upload; returns the artefact_uri (None: the store is a folder).
    Raises EdgeCompressError (one line) when the upload fails."""
    store = artefact_store.store_url()
    if not store:
        return None
    uri = artefact_store.upload(folder, artefact_store.trial_uri(store, study_name, number))
    if result.get(URI_KEY):
        artefact_store.remove(result[URI_KEY])
    return uri


def not_found_reason(result: dict[str, Any]) -> str:
    """fail_reason of a complete trial whose artefacts the driver found nowhere."""
    where = f"{result.get('ec_artefacts')}, node {result.get('ec_node')}"
    if result.get(URI_KEY):
        return (f"the trial's artefacts ({where}) are not visible to the driver and its upload "
                f"{result[URI_KEY]} is incomplete")
    if URI_KEY in result:
        return f"the trial's artefacts ({where}) are not visible to the driver and their upload failed"
    return (f"the trial's artefacts ({where}) are not visible to the driver: give --artefacts a folder every "
            "Ray node shares, or an fsspec URL (s3://...)")


def published(study_name: str, number: int, folder: Path, result: dict[str, Any], state: TrialState,
               attrs: dict[str, Any]) -> tuple[TrialState, dict[str, Any]]:
    """A complete trial's folder uploaded to a URL store (artefact_uri; a cached copy shares its source's);
    a failed upload makes it FAIL with the reason."""
    if state != TrialState.COMPLETE or not artefact_store.store_url():
        return state, attrs
    if "ec_cached_from" in result and attrs.get(A.ARTEFACT_URI):
        return state, attrs
    try:
        return state, {**attrs, A.ARTEFACT_URI: publish(folder, study_name, number, result)}
    except EdgeCompressError as e:
        return TrialState.FAIL, {**attrs, A.STATE_DETAIL: "failed", A.FAIL_REASON: str(e)}
