"""CI cannot go green on a broken machine: with CI=true a missing service stops `make` and pytest with one line
naming it; without CI=true the tests needing it skip with their reason (-rs). A test run leaves $HOME untouched.

The machine here has PostgreSQL; these tests hide it (a PATH without it and PG_LIB pointing at an empty folder),
which is what a machine without it looks like to the Makefile and to tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")


def _bin_without_postgres(tmp_path: Path) -> Path:
    """A PATH folder with what the recipes use (sh, id, ls) and an apt-get that fails, but no PostgreSQL."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("sh", "id", "ls"):
        (fake / tool).symlink_to(shutil.which(tool))
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    return fake


@pytest.mark.skipif(MAKE is None, reason="no make")  # never under CI: CI runs through make
@pytest.mark.parametrize("ci", ["true", ""])
def test_make_services_without_postgresql(tmp_path: Path, ci: str) -> None:
    fake = _bin_without_postgres(tmp_path)
    env = {"PATH": str(fake), "CI": ci, "PG_LIB": str(tmp_path / "no-postgresql"), "HOME": str(tmp_path)}
    res = subprocess.run([MAKE, "-s", "-C", str(REPO), "services"], capture_output=True, text=True, env=env,
                         timeout=60)
    # as root the (failing) apt-get is tried; otherwise apt is not usable: either way one line says why
    why = ("the Debian package postgresql did not install" if os.geteuid() == 0 else
           "apt-get is not usable here (needs root); install the Debian package postgresql")
    if ci:
        assert res.returncode != 0, res.stdout + res.stderr
        first = res.stderr.splitlines()[0]
        assert first == f"CI=true: PostgreSQL is missing ({why})", res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert f"PostgreSQL is missing ({why}): the PostgreSQL tests will skip" in res.stdout


def _pytest_without_postgres(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI=ci, PG_LIB=str(tmp_path / "no-postgresql"),
               PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                    if not (Path(p) / "pg_ctl").exists()))
    return subprocess.run([sys.executable, "-m", "pytest", "-q",
                           str(REPO / "tests" / "search" / "test_postgres.py")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=240)


def test_ci_pytest_without_postgresql_stops_with_one_line(tmp_path: Path) -> None:
    res = _pytest_without_postgres(tmp_path, "true")
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "CI=true" in ln]
    assert len(lines) == 1 and "missing PostgreSQL (initdb/pg_ctl" in lines[0], res.stdout[-3000:]
    assert " passed" not in res.stdout  # stopped before any test ran


def test_local_pytest_without_postgresql_skips_and_says_why(tmp_path: Path) -> None:
    res = _pytest_without_postgres(tmp_path, "")
    assert res.returncode == 0, res.stdout[-3000:]
    skips = [ln for ln in res.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert skips and all("needs PostgreSQL (initdb/pg_ctl" in ln for ln in skips), res.stdout[-3000:]


def test_ci_turns_any_other_skip_into_a_failure(tmp_path: Path) -> None:
    """Under CI=true only a test that needs CUDA may skip; a plain pytest.skip fails, with its reason."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n"
        "def test_skips():\n    pytest.skip('no widget')\n\n"
        "@pytest.mark.needs('cuda')\ndef test_cuda():\n    import torch\n    assert torch.cuda.is_available()\n")
    env = dict(os.environ, CI="true")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    import torch

    assert res.returncode == 1, res.stdout[-3000:]
    assert "CI=true: this test may not skip" in res.stdout and "no widget" in res.stdout
    expected = "1 failed, 1 passed" if torch.cuda.is_available() else "1 failed, 1 skipped"
    assert expected in res.stdout, res.stdout[-2000:]


def test_the_suites_cache_setup_writes_nothing_under_home(tmp_path: Path) -> None:
    """The suite's cache setup (tests/conftest.py) sends the writable cache to a session folder: tests that
    render scenes and train a base model, run with an empty $HOME, leave it empty."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECOMPRESS_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    tests = ["tests/evaluators/test_scenes.py", "tests/test_cli_base.py::test_train_base_reuses_cache"]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=280)
    assert res.returncode == 0, res.stdout[-3000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], written
