"""The report, opened in headless Chromium, draws both fronts and the base: checked by the trace names in the page's
plotly data once plotly has drawn it (not by pixels)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from edgecompress.results import build_report
from edgecompress.results.gains import BASE_LABEL
from edgecompress.results.plots import FRONT_ALL_LABEL, FRONT_DEPLOYABLE_LABEL

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

# after load, write each drawn graph's trace names (gd.data exists only once Plotly.newPlot ran) into the page
PROBE = """<script>
window.addEventListener("load", () => {
  const graphs = [...document.querySelectorAll(".plotly-graph-div")];
  const names = graphs.map(gd => (gd.data || []).map(t => t.name || ""));
  const pre = document.createElement("pre"); pre.id = "trace-names";
  pre.textContent = JSON.stringify(names); document.body.appendChild(pre);
});
</script>"""


@pytest.mark.needs("chromium")
def test_report_in_chromium_shows_both_fronts_and_the_base(handmade, tmp_path) -> None:
    out = build_report(handmade.study, tmp_path / "report.html", deployable=True)
    page = tmp_path / "probe.html"
    page.write_text(out.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
           "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    m = re.search(r'<pre id="trace-names">(.*?)</pre>', dom, flags=re.S)
    assert m, dom[-2000:]
    graphs = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    front_fig = graphs[0]  # the first figure is the Pareto front
    assert FRONT_ALL_LABEL in front_fig and FRONT_DEPLOYABLE_LABEL in front_fig and BASE_LABEL in front_fig
    # the base is marked on every plot that has a point for it: front, hypervolume (parameters: parallel axes)
    with_base = [g for g in graphs if BASE_LABEL in g]
    assert len(with_base) >= 2, graphs
    assert 'class="legendtext"' in dom and BASE_LABEL in dom  # drawn in the legend, not only in the data
