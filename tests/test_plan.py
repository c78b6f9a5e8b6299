"""Planned units priced before any history: estimate's AI-tool lines, the budget guard, the README table."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.finance import estimate as est
from pipeline.finance import plan, plan_table
from pipeline.job import load_job

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "episodes" / "demo" / "job.yaml"
API = ["profile=api", "stages.script.backend=fountain", "stages.script.options={}"]


@pytest.fixture(autouse=True)
def no_history(monkeypatch):
    monkeypatch.setattr(est, "learn_rates", lambda *a, **k: {})  # a studio before its first run


def test_estimate_prices_the_planned_units_before_any_run():
    job = load_job(DEMO, API)
    script = plan.source_script(job)
    result = est.estimate(job, len(script.shots), "sqlite:///unused.db")
    lines = {(ln["stage"], ln["item"]): ln for ln in result["planned"]["lines"]}
    seconds = [plan.shot_seconds(s, "zh", job.stages.dub) for s in script.shots]
    clips = sum(5 if s <= 5 else 10 for s in seconds)
    video = lines[("video", "wan2.5-i2v-preview:720p")]
    assert Decimal(video["quantity"]) == clips and Decimal(video["amount"]) == Decimal("0.60") * clips
    assert Decimal(lines[("storyboard", "wan2.2-t2i-flash")]["quantity"]) == len(script.shots)
    chars = sum(len(line.text[g]) for s in script.shots for line in s.lines for g in ("zh", "en"))
    assert Decimal(lines[("dub", "qwen3-tts-flash")]["quantity"]) == chars
    assert {ln["stage"] for ln in result["stages"] if ln["estimate_cny"] is not None} == {
        "translate", "storyboard", "dub", "video"}
    total = sum(Decimal(ln["amount"]) for ln in result["planned"]["lines"])
    assert Decimal(result["planned"]["ai_tools_exact_cny"]) == total
    per_minute = total / (Decimal(str(round(sum(seconds), 6))) / 60)
    assert result["planned"]["ai_tools_per_finished_minute_cny"] == str(per_minute.quantize(Decimal("0.01")))


def test_budget_guard_stops_before_video_on_the_plan_alone(tmp_path):
    from pipeline.finance.estimate import BudgetExceeded, BudgetGuard

    job = load_job(DEMO, [*API, 'budget.max_cny="5.00"'])
    guard = BudgetGuard(job, "run-x", f"sqlite:///{tmp_path / 'l.db'}", "sqlite:///unused.db")
    guard("storyboard", len(plan.source_script(job).shots))  # 7 images: 0.98 CNY fits
    with pytest.raises(BudgetExceeded, match="stopped before stage 'video'.*estimated 27(\.00)? CNY"):
        guard("video", len(plan.source_script(job).shots))


def test_readme_table_is_the_one_estimate_computes():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert plan_table.markdown() in readme  # regenerate: python -m pipeline.finance.plan_table


def test_a_gpu_model_without_a_price_stops_a_gpu_job_before_it_starts():
    """GPU time is priced per model (configs/prices/compute-*.yaml, gpu_model tokens): a cluster whose GPUs
    no table prices refuses a job that asks for GPUs, naming the model and the fix; a CPU job is not asked."""
    gpu = load_job(DEMO, ["stages.video.num_gpus=1"])
    assert plan.gpu_price_problems(gpu, ["H100", "H200"]) == []  # both priced in the shipped tables
    (problem,) = plan.gpu_price_problems(gpu, ["H100", "B300"])
    assert problem.startswith("stages.video: asks for GPUs and this cluster has B300 GPUs, which no price table")
    assert "gpu_model: B300" in problem and "configs/prices/" in problem
    assert plan.gpu_price_problems(load_job(DEMO), ["B300"]) == []  # no stage asks for a GPU
