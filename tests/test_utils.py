"""utils.plain / is_finite_number: the one JSON-friendly conversion the objective, report, export and retarget use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from edgecompress.utils import is_finite_number, plain


def test_is_finite_number() -> None:
    for v in (0, 1.5, np.float32(2.0), np.int64(3), np.float64(-1e300)):
        assert is_finite_number(v), v
    for v in (True, np.bool_(True), math.nan, math.inf, np.float32("nan"), -np.inf, "1", None, [1], object()):
        assert not is_finite_number(v), v


def test_plain_makes_nested_values_json_and_safe_yaml_friendly() -> None:
    class Version(str):  # like torch's TorchVersion: a str subclass yaml.safe_dump refuses
        pass

    v = {"a": np.float32(1.5), 3: (np.int64(2), math.nan, np.bool_(True)), "p": Path("/x/y"),
         "arr": np.array([[1.0, np.inf]]), "ver": Version("2.5"), "t": pd.Timestamp("2024-01-02"),
         "nat": pd.NaT, "na": pd.NA, "obj": object, "none": None}
    out = plain(v)
    assert out["a"] == 1.5 and type(out["a"]) is float
    assert out["3"] == [2, None, True] and type(out["3"][0]) is int and type(out["3"][2]) is bool
    assert out["p"] == "/x/y" and out["arr"] == [[1.0, None]] and type(out["ver"]) is str
    assert out["t"] == "2024-01-02 00:00:00" and out["nat"] is None and out["na"] is None
    assert out["obj"] == str(object) and out["none"] is None
    json.dumps(out, allow_nan=False)
    yaml.safe_dump(out)


def test_plain_options() -> None:
    assert math.isnan(plain(np.float64("nan"), keep_nonfinite=True))  # user attrs: Optuna's JSON keeps NaN
    assert plain([1.0, math.inf], keep_nonfinite=True) == [1.0, math.inf]
    assert plain(math.inf) is None and plain(np.float32("nan")) is None
    assert plain((np.int64(1), 2), flat=True) == "[1, 2]"  # one report cell
    assert plain({"k": np.float64(0.5)}, flat=True) == "{'k': 0.5}"
    assert plain(np.float64(0.25), flat=True) == 0.25 and plain("x", flat=True) == "x"
