"""The Ray backend on a local two-node cluster (ray.cluster_utils.Cluster, reached with --address): CPUs per
trial as Ray accounts them, a killed driver resumed by the same command, and a study of the real evaluator
exported and cascaded, whose trials loaded the base model the driver trained instead of training their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

import edgecompress
from edgecompress.evaluators.result import ARTEFACT_FILES
from edgecompress.search.progress import is_counted
from edgecompress.study import load_study

pytestmark = pytest.mark.slow

REPO = Path(edgecompress.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201
    """A head node and a second node, 2 CPUs each; their workers import this checkout of edgecompress."""
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECOMPRESS_RUNS", "EDGECOMPRESS_ARTEFACTS")}
    return env


DRIVER = """
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("search_fakes", {fakes!r})
m = importlib.util.module_from_spec(spec); sys.modules["search_fakes"] = m; spec.loader.exec_module(m)
import ray.cloudpickle
ray.cloudpickle.register_pickle_by_value(m)

class Sleepy(m.FakeEvaluator):
    def __call__(self, config, artefact_dir=None, on_epoch=None):
        time.sleep(self.delay)
        return super().__call__(config, artefact_dir, None)

from edgecompress.search.ray_runner import run_ray_search
a = json.loads(sys.argv[1])
ev = Sleepy(a["log"], delay=a["delay"], epochs=0)
exp = m.small_experiment(budget={{"sampler": "random", "enqueue_uncompressed": False}},
                         space={{"prune": {{"low": 0.0, "high": 0.7}}}})
s = run_ray_search(exp, a["study"], storage=a["url"], trials=a["trials"], max_concurrent=a["concurrent"],
                   cpus_per_trial=a["cpus"], address=a["address"], evaluator=ev, artefacts=a["store"])
print(json.dumps({{"finished": s.stats.finished}}))
"""


def driver(tmp_path: Path, fakes, name: str, log: str, **args: object) -> subprocess.Popen:  # noqa: ANN001
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(fakes=str(fakes.path)))
    folder = tmp_path / "driver"
    folder.mkdir(exist_ok=True)
    a = {"study": name, "log": str(tmp_path / log), **args}
    return subprocess.Popen([sys.executable, str(script), json.dumps(a)], cwd=folder, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done(p: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    assert p.returncode == 0, err[-3000:]
    return out


def test_cpus_per_trial_on_two_nodes(cluster, fakes, tmp_path: Path) -> None:
    name, url = f"cpus-{uuid.uuid4().hex[:6]}", f"sqlite:///{tmp_path}/cpus.db"
    out = done(driver(tmp_path, fakes, name, "calls.log", url=url, trials=4, concurrent=2, cpus=2, delay=3.0,
                      address=cluster.address, store=str(tmp_path / "store")))
    assert json.loads(out.strip().splitlines()[-1])["finished"] == 4
    trials = load_study(name, storage=url).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    # Ray's own accounting, recorded by each trial: 2 CPUs each, so 2 nodes of 2 CPUs hold one trial each
    assert all(t.user_attrs["ray_resources"] == {"CPU": 2.0} for t in trials)
    assert len({t.user_attrs["ray_node"] for t in trials}) == 2
    for t in trials:
        assert (Path(t.user_attrs["artefact_dir"]) / ARTEFACT_FILES["model"]).is_file()
        assert Path(t.user_attrs["artefact_dir"]).is_relative_to(tmp_path / "store" / name)


def test_killed_driver_resumes_with_the_same_command(cluster, pg_server, fakes, tmp_path: Path) -> None:
    """The study on PostgreSQL (what a cluster uses): the driver is SIGKILLed after 2 trials, the same
    command run again finishes the study without re-running a finished trial."""
    name, url = f"resume-{uuid.uuid4().hex[:6]}", pg_server.url
    args = dict(url=url, trials=6, concurrent=1, cpus=1, delay=2.0, address=cluster.address,
                store=str(tmp_path / "store"))
    first = driver(tmp_path, fakes, name, "first.log", **args)
    try:
        deadline, error = time.time() + 300, None
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                n = sum(t.state == TrialState.COMPLETE for t in load_study(name, storage=url).trials)
                if n >= 2:
                    break
            except Exception as e:  # noqa: BLE001 - not created yet
                error = e
        else:
            pytest.fail(f"the first driver did not finish 2 trials in 300 s (last error: {error})")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -9  # killed mid-study, not finished
    kept = {t.number: (t.values, t.datetime_complete, t.user_attrs["config_hash"])
            for t in load_study(name, storage=url).trials if t.state == TrialState.COMPLETE}
    done(driver(tmp_path, fakes, name, "second.log", **args))
    trials = load_study(name, storage=url).trials
    assert sum(is_counted(t) for t in trials) == 6
    for n, (values, when, _) in kept.items():  # finished trials kept as they were ...
        assert (trials[n].values, trials[n].datetime_complete) == (values, when)
    rerun = (tmp_path / "second.log").read_text().split()
    assert not {h for *_, h in kept.values()} & set(rerun)  # ... and not run again
    assert len(rerun) == 6 - len(kept)


def test_real_ray_study_exported_and_cascaded(cluster, tmp_path: Path, fmnist_dir, tiny_pipeline) -> None:
    cfg = tmp_path / "tiny.yaml"
    # tests/conftest.py's TINY_PIPELINE without fine-tuning epochs: ASHA then stops no trial early
    tiny = tiny_pipeline(name="tiny-ray",
                         budget={"trials": 3, "sampler": "random", "enqueue": [{"prune": 0.5, "resolution": 0.5}]})
    tiny["finetune"]["epochs"] = 0
    cfg.write_text(yaml.safe_dump(tiny))
    work = tmp_path / "work"  # the driver's working folder: runs/ is relative to it
    work.mkdir()

    def cli(*args: str) -> str:
        return done(subprocess.Popen([sys.executable, "-m", "edgecompress.cli", *args], cwd=work,
                                     env={**_env(), "PYTHONPATH": os.environ["PYTHONPATH"]},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), timeout=600)

    url = f"sqlite:///{work}/runs/rr.db"
    cli("search", str(cfg), "--study", "rr", "--backend", "ray", "--address", cluster.address, "--workers", "2",
        "--cpus-per-trial", "1", "--trials", "3", "--storage", url, "--no-progress")
    trials = load_study("rr", storage=url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 3 and len(complete) >= 2, [t.user_attrs.get("fail_reason") for t in trials]
    bases = sorted((work / "runs" / "cache").glob("base-*"))
    assert len(bases) == 1  # trained once, by the driver, before the trials
    for t in complete:  # each trial loaded that base from the cache: none trained its own
        assert t.user_attrs["base_from_cache"] is True and t.user_attrs["base_dir"] == str(bases[0])
        assert Path(t.user_attrs["artefact_dir"]).is_relative_to(work / "runs" / "rr")
    best = max(complete, key=lambda t: t.values[0])
    cli("export", "rr", "--storage", url, "--trial", str(best.number), "--format", "yaml,onnx", "-o",
        str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "model.onnx").is_file()
    printed = cli("cascade", "rr", "--storage", url, "-o", str(tmp_path / "cascade"), "--samples", "40",
                  "--min-accuracy", "0.0")
    assert "wrote" in printed
    ev = json.loads((tmp_path / "cascade" / "evaluation.json").read_text())
    assert len(ev["plan"]["stages"]) >= 1 and ev["measured_latency_b1_ms"] > 0
