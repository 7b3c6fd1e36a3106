"""User errors through the real CLI: one line on stderr, exit code 2, and no trial run.

Data errors (a dataset.root that does not exist, a truncated IDX file) stop `search`, `train-base` and
`evaluate` before any work; a storage file that is not a database stops `pareto`, `report`, `export` and
`search` without a traceback and without touching the file. (`cascade --kind foo` on a real study: see
tests/cascade/test_cascade_cli.py.)
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.cli import main
from edgecompress.evaluators.data import FMNIST_FILES

TINY = """
name: errors
seed: 0
dataset: {name: fashion_mnist, train_subset: 256, val_subset: 128, test_subset: 128}
model: {name: resnet8, kwargs: {widths: [8, 16, 16]}}
base_training: {epochs: 1, batch_size: 64}
finetune: {epochs: 1, batch_size: 64, train_subset: 128}
space: {prune: {choices: [0.0, 0.5]}, bits: {choices: [32]}, resolution: {choices: [1.0]}}
budget: {trials: 2, sampler: random}
device: {device: cpu, threads: 1, min_repeats: 3, max_seconds: 0.2, batch_size: 4}
"""


def run_cli(args: list[str], runs: Path) -> subprocess.CompletedProcess:
    """`python -m edgecompress.cli ARGS` in a fresh process (stderr not a terminal), runs/ under `runs`."""
    env = dict(os.environ, EDGECOMPRESS_RUNS=str(runs))
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def one_error_line(stderr: str) -> str:
    """The single line the CLI printed for a user error (fails on a traceback or extra output)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "errors.yaml"
    path.write_text(TINY)
    return path


def assert_no_study(runs: Path, study: str) -> None:
    """Nothing of the study exists: no storage file, no trial folders (so no trial ran)."""
    assert not list(runs.glob(f"{study}.*")), list(runs.iterdir())
    assert not (runs / study).exists()


# ---- data errors: before any trial -----------------------------------------------------------------
def test_search_with_a_missing_dataset_root_is_one_line_and_runs_no_trial(config: Path, tmp_path: Path) -> None:
    runs, missing = tmp_path / "runs", tmp_path / "no-such-folder"
    res = run_cli(["search", str(config), "--study", "s", "--set", f"dataset.root={missing}"], runs)
    assert res.returncode == 2, res.stderr[-3000:]
    assert one_error_line(res.stderr) == f"error: dataset.root {missing}: folder not found"
    assert res.stdout == ""
    assert_no_study(runs, "s")


@pytest.mark.parametrize("command", [["train-base"], ["evaluate", "--set", "prune=0.5"]])
def test_train_base_and_evaluate_with_a_missing_root_are_one_line(config: Path, tmp_path: Path,
                                                                  command: list[str]) -> None:
    missing = tmp_path / "no-such-folder"
    flag = "--override" if command[0] == "evaluate" else "--set"
    res = run_cli([command[0], str(config), *command[1:], flag, f"dataset.root={missing}"], tmp_path / "runs")
    assert res.returncode == 2
    assert one_error_line(res.stderr) == f"error: dataset.root {missing}: folder not found"


def _copy_with(fmnist_dir: Path, dest: Path, name: str, cut: str) -> Path:
    """The real Fashion-MNIST files in `dest`, with file `name` truncated: `cut` "gzip" keeps the first
    half of the compressed bytes (an interrupted download); "content" re-compresses the first half of its
    content (a valid gzip whose IDX body is shorter than its header says)."""
    dest.mkdir()
    for f in FMNIST_FILES.values():
        shutil.copyfile(fmnist_dir / f, dest / f)
    target = dest / name
    data = target.read_bytes()
    if cut == "gzip":
        target.write_bytes(data[: len(data) // 2])
    else:
        raw = gzip.decompress(data)
        target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return target


@pytest.mark.parametrize(("name", "cut", "says"), [
    (FMNIST_FILES["train_images"], "gzip", "cannot read (Compressed file ended"),
    (FMNIST_FILES["test_labels"], "content", "truncated, header says 10000 values"),
])
def test_search_on_a_truncated_idx_file_is_one_line_and_runs_no_trial(
        config: Path, tmp_path: Path, fmnist_dir: Path, name: str, cut: str, says: str) -> None:
    runs = tmp_path / "runs"
    target = _copy_with(fmnist_dir, tmp_path / "fm", name, cut)
    res = run_cli(["search", str(config), "--study", "s", "--set", f"dataset.root={target.parent}"], runs)
    assert res.returncode == 2, res.stderr[-3000:]
    line = one_error_line(res.stderr)
    assert line.startswith(f"error: {target}: ") and says in line, line
    assert res.stdout == ""
    assert_no_study(runs, "s")


# ---- image folders a classifier cannot be trained on -------------------------------------------------
def _folders(root: Path, classes: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/ with the given number of real PNG images per class and split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in classes.items():
        for c, n in per_class.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (36, 36, 3)).astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


FOLDER_YAML = """
name: folder
dataset: {{name: imagefolder, root: {root}}}
model: {{name: resnet8, kwargs: {{widths: [8, 16, 16]}}}}
base_training: {{epochs: 1, batch_size: 8}}
finetune: {{epochs: 1, batch_size: 8}}
space: {{prune: {{choices: [0.0]}}, bits: {{choices: [32]}}, resolution: {{choices: [1.0]}}}}
budget: {{trials: 1, sampler: random}}
device: {{device: cpu, threads: 1, min_repeats: 3, max_seconds: 0.2, batch_size: 4}}
"""


def _bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """An image folder broken as `case` says, and the start of the error that must name it."""
    two = {"a": 3, "b": 3}
    layout = {"train": dict(two), "val": dict(two)}
    if case == "one-class-train":
        layout["train"] = {"a": 3}
    elif case == "one-class-val":
        layout["val"] = {"a": 3}
    elif case == "empty-class":
        layout["val"] = {"a": 3, "b": 0}
    root = _folders(tmp_path / "imgs", layout)
    if case == "unreadable-class":
        for f in (root / "train" / "b").iterdir():
            f.write_bytes(b"not an image")
    expect = {"one-class-train": f"{root / 'train'}: 1 class folder ('a'); a classifier needs at least 2",
              "one-class-val": f"{root / 'val'}: 1 class folder ('a'); a classifier needs at least 2",
              "empty-class": f"{root / 'val' / 'b'}: class folder with no images",
              "unreadable-class": f"{root / 'train' / 'b'}: class folder with none of its 3 images can be read"}
    return root, expect[case]


@pytest.mark.parametrize("case", ["one-class-train", "empty-class"])
@pytest.mark.parametrize("command", ["train-base", "search"])
def test_an_image_folder_no_classifier_can_learn_is_refused_before_training(
        tmp_path: Path, case: str, command: str) -> None:
    """One class in train/ (a "classifier" that reaches 100%), or a class folder without an image: one line
    naming the folder, exit 2, no base model trained and no study created."""
    root, expect = _bad_folder(tmp_path, case)
    cfg = tmp_path / "folder.yaml"
    cfg.write_text(FOLDER_YAML.format(root=root))
    runs = tmp_path / "runs"
    args = [command, str(cfg)] + (["--study", "s"] if command == "search" else [])
    res = run_cli(args, runs)
    assert res.returncode == 2, res.stderr[-3000:]
    assert one_error_line(res.stderr).startswith(f"error: {expect}")
    assert not list(runs.rglob("model.pt")) and not list(runs.rglob("base-*"))  # no base model trained
    assert_no_study(runs, "s")


@pytest.mark.parametrize("case", ["one-class-val", "unreadable-class"])
def test_the_other_unlearnable_folders_are_refused_by_the_loader(tmp_path: Path, case: str) -> None:
    """The same check (what train-base and search call first), for one class in val/ and a class whose every
    image is unreadable."""
    from edgecompress.errors import DataError
    from edgecompress.evaluators.data import load_data
    from edgecompress.spaces.experiment import DatasetConfig

    root, expect = _bad_folder(tmp_path, case)
    with pytest.raises(DataError) as e:
        load_data(DatasetConfig(name="imagefolder", root=str(root)), 0)
    assert str(e.value).startswith(expect)


def test_a_class_with_some_unreadable_images_still_loads(tmp_path: Path) -> None:
    """Only a class with no readable image is refused: one bad file among good ones is named when it is loaded."""
    from edgecompress.evaluators.data import load_data
    from edgecompress.spaces.experiment import DatasetConfig

    root = _folders(tmp_path / "imgs", {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    (root / "train" / "b" / "0.png").write_bytes(b"broken")
    bundle = load_data(DatasetConfig(name="imagefolder", root=str(root)), 0)
    assert bundle.classes == ["a", "b"] and len(bundle.train) + len(bundle.val) == 6


# ---- storage files that are not a database ---------------------------------------------------------
def test_results_commands_on_a_file_that_is_not_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture, config: Path) -> None:
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    bogus = tmp_path / "x.db"
    text = "id,accuracy\n1,0.9\n" * 100  # e.g. a CSV saved under the wrong name
    bogus.write_text(text)
    for args in (["pareto", "x"], ["pareto", str(bogus)], ["pareto", "x", "--storage", str(bogus)],
                 ["pareto", f"sqlite:///{bogus}"], ["report", str(bogus), "-o", str(tmp_path / "r.html")],
                 ["export", str(bogus), "-o", str(tmp_path / "out"), "--trial", "0"],
                 ["search", str(config), "--study", "x", "--storage", f"sqlite:///{bogus}"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2, args
        line = one_error_line(capsys.readouterr().err)
        assert line == f"error: {bogus}: not an SQLite database (a study storage is an Optuna SQLite .db file " \
                       "or a .journal/.log/.jsonl journal)", (args, line)
    assert bogus.read_text() == text  # not written to (no schema created, no trial)
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "out").exists()


# ---- a project error against a bug (issue 27) --------------------------------------------------------
def test_a_project_error_is_one_line_with_the_cli_flag_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture,
                                                                  config: Path) -> None:
    """The library names its argument (`storage`); the CLI prints its flag (--storage)."""
    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(["search", str(config), "--study", "x", "--storage", "nonsense"])
    assert e.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --storage 'nonsense': expected an SQLAlchemy URL"), line
    assert_no_study(tmp_path, "x")


def test_a_bug_prints_its_traceback_and_exits_70(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Any other exception (here a KeyError from a library function `pareto` calls) is a bug: the traceback,
    then one line saying so, exit 70 (EX_SOFTWARE), not a one-line exit 2."""
    import edgecompress.study

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("no such column")

    monkeypatch.setenv("EDGECOMPRESS_RUNS", str(tmp_path))
    monkeypatch.setattr(edgecompress.study, "load_study", broken)
    with pytest.raises(SystemExit) as e:
        main(["pareto", "x"])
    assert e.value.code == 70
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "in broken" in err, err[-3000:]
    assert lines[-2] == "KeyError: 'no such column'"
    assert lines[-1] == "this is a bug in edgecompress, please report it: KeyError: 'no such column'"
    assert not any(line.startswith("error: ") for line in lines)


def test_a_bug_in_a_subprocess_exits_70(tmp_path: Path) -> None:
    """The same through the real entry point (`python -m edgecompress.cli`): a ValueError that is not a project
    error is a bug now, not a one-line exit 2."""
    code = ("import sys, edgecompress.study as r\n"
            "def broken(*a, **k):\n    raise ValueError('unexpected')\n"
            "r.load_study = broken\n"
            "from edgecompress.cli import main\nmain(sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", code, "pareto", "x"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, EDGECOMPRESS_RUNS=str(tmp_path)))
    assert res.returncode == 70, res.stderr[-3000:]
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("this is a bug in edgecompress, please report it: "
                                                   "ValueError: unexpected")


def test_with_flags_rewrites_only_the_known_argument_names() -> None:
    from edgecompress.cli.base_cmd import with_flags

    assert with_flags("export: give either `trial` or `knee`, not both") == "export: give either --trial or " \
                                                                           "--knee, not both"
    assert with_flags("x (pass `force` to write it anyway); `new_study` 'a'") == \
        "x (pass --force to write it anyway); --new-study 'a'"
    assert with_flags("timm is not installed (`make install` installs it); use `export`") == \
        "timm is not installed (`make install` installs it); use `export`"
