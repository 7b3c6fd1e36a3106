"""The README's bring-your-own-model table is bench/results/byo.json rendered (`bench/byo.py --readme`), not
typed by hand: re-run the bench, paste the rendering, and this test keeps the two equal."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_byo_table_is_the_json_rendered() -> None:
    spec = importlib.util.spec_from_file_location("bench_byo", ROOT / "bench" / "byo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = json.loads((ROOT / "bench" / "results" / "byo.json").read_text())
    block = re.search(r"<!-- byo:begin[^>]*-->\n(.*?)\n<!-- byo:end -->", (ROOT / "README.md").read_text(), re.S)
    assert block is not None, "README lost its byo block"
    assert block.group(1) == module.readme_table(doc)
    assert doc["archs"]["torchvision:resnet18"]["latency_b1_ms"]["prune0.5_fp32"] < \
        doc["archs"]["torchvision:resnet18"]["latency_b1_ms"]["prune0_fp32"]
