"""notebooks/finance.ipynb runs top to bottom (nbclient) against metered data the test prepared, passed to the
kernel through MICRODRAMA_* environment variables; its outputs show the cost table, a chart and the claims."""
from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.money import exact_sum
from test_claims_build import YEAR, drama_lines, facts_data, metered_sum, prepare_metered, write_facts

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "finance.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory, ray_session):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    metered = prepare_metered(tmp_path_factory.getbasetemp() / "claims-metered")
    facts = write_facts(tmp_path_factory.mktemp("nb") / "facts.yaml", facts_data(districts=("huairou", "yizhuang")))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv  # jupyter_client maps these to us
    env = {"MICRODRAMA_TRACKING_URI": metered["tracking_uri"], "MICRODRAMA_LEDGER": metered["ledger_url"],
           "MICRODRAMA_DRAMA": "claims-a", "MICRODRAMA_FACTS": str(facts), "MICRODRAMA_YEAR": str(YEAR),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
        for key, value in env.items():
            mp.setenv(key, value)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, kernel_name="python3", timeout=240,
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return nb, metered


def _outputs(cell) -> list[dict]:
    return [o for o in cell.get("outputs", [])]


def _text(cell) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in _outputs(cell))


def test_notebook_shows_the_cost_table_and_a_chart(executed):
    nb, _ = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in _outputs(c) if o["output_type"] == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for c in code for o in _outputs(c))
    for stage in ("storyboard", "video", "edit", "TOTAL", "cost.compute_cny"):
        assert stage in html  # the report table (pandas HTML)
    assert any("image/png" in o.get("data", {}) for c in code for o in _outputs(c))


def test_notebook_claims_match_the_metered_compute(executed):
    nb, metered = executed
    (cell,) = [c for c in nb.cells if "claims-summary" in c.get("metadata", {}).get("tags", [])]
    summary = json.loads(_text(cell))
    lines = drama_lines(metered, "claims-a")
    compute = metered_sum(lines, ("compute", "idle"))  # final cut + rework + idle: the huairou basis
    fields = summary["metered"]
    assert exact_sum(fields[f] for f in ("costs.compute", "costs.rework_compute", "costs.idle")) == compute
    assert Decimal(fields["production"]) == metered_sum(lines, ("compute", "idle", "ai_tool"))
    voucher = summary["claims"]["programmes"]["huairou.compute_voucher"]
    expected = (Decimal("0.30") * compute).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    assert voucher["by_drama"] == {"claims-a": str(expected)} and expected > 0
    assert summary["claims"]["year"] == YEAR and "trace" in voucher
    traces = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "== huairou.compute_voucher" in traces and "003_332d36df0d886521.txt" in traces
