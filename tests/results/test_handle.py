"""`edgecompress.Study`: one handle on a stored study gives what the functions give (frame, front, select,
export), its option objects keep the driven functions' keyword arguments, and finalize needs a storage URL."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import edgecompress
from edgecompress.cascade.pipeline.from_study import cascade_from_study
from edgecompress.errors import ConfigError
from edgecompress.export.trial_export import export_trial
from edgecompress.handle import CascadeOptions, ExportOptions, FinalizeOptions, FrontOptions, Study
from edgecompress.results.pareto import select
from edgecompress.search.finalize import finalize_study
from edgecompress.study.front import front
from edgecompress.study.storage import load_study


def _keywords(fn, handled: set[str]) -> dict[str, object]:
    """The keyword arguments of `fn` an options object must carry (those the handle passes itself excluded)."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and p.name not in handled}


@pytest.mark.parametrize(("options", "fn", "handled"), [
    (ExportOptions, export_trial, {"trial", "max_latency", "min_accuracy", "knee", "storage"}),
    (CascadeOptions, cascade_from_study, {"storage"}),
    (FinalizeOptions, finalize_study, {"storage"}),
    (FrontOptions, front, {"storage"}),
])
def test_options_objects_carry_exactly_the_functions_keywords_and_defaults(options, fn, handled) -> None:
    want = _keywords(fn, handled)
    got = {name: f.default for name, f in options.__dataclass_fields__.items()}
    assert got == want


def test_the_handle_opens_once_and_gives_what_the_functions_give(real_db, tmp_path: Path) -> None:
    study = edgecompress.Study.load(real_db.url)
    assert isinstance(study, Study) and study.name == load_study(real_db.url).study_name
    frame = study.frame()
    assert len(frame) and list(study.front()["number"]) == list(front(real_db.url)["number"])
    assert study.select(max_latency=1e9).number == select(front(real_db.url), max_latency=1e9).number
    knee = study.select(knee=True)
    assert knee.number in set(study.front()["number"])

    res = study.export(tmp_path / "out", ExportOptions(formats="onnx", data=real_db.data), trial=knee.number)
    assert res.ok and res.number == knee.number
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_finalize_without_a_storage_url_says_how_to_open_it(real_db) -> None:
    study = Study(load_study(real_db.url))  # an optuna.Study object: no URL to write <name>-final beside it
    with pytest.raises(ConfigError, match=r"Study.load\(name, storage=URL\)"):
        study.finalize()


def test_no_name_in_all_is_shadowed_by_a_subpackage() -> None:
    """Importing every subpackage leaves each public name the documented object (not a module)."""
    import importlib
    import pkgutil

    for mod in pkgutil.walk_packages(edgecompress.__path__, "edgecompress."):
        if not mod.name.startswith("edgecompress.cli") and mod.name != "edgecompress.testing":
            importlib.import_module(mod.name)
    for name in edgecompress.__all__:
        obj = getattr(edgecompress, name)
        assert not inspect.ismodule(obj), f"edgecompress.{name} is the module {obj.__name__}"
        if name in edgecompress._API:
            assert obj is getattr(importlib.import_module(edgecompress._API[name]), name), name
