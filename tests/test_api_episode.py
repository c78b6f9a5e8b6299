"""One episode on the `api` profile end to end on Ray against the local fake DashScope server: Qwen writes and
translates, Wan draws and animates, Qwen-TTS speaks. A shot refused by moderation fails alone (named with its
prompt) while the other shot's paid clip is kept; the re-run pays only for the refused shot. The ledger, the
MLflow runs and the claims' metered figures carry the AI-tool lines."""
from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from pipeline.job import load_job
from tests.media import probe
from tests.providers import dashscope as fake_ds
from tests.providers.base import Behaviour

KEY = "sk-ds-episode-2c9e41"
TREATMENT = """\
Title: 替身合同
Logline: 实习生林晓被迫签下替身合同。
Language: zh

= 顾辰逼林晓签下替身合同。
= 林晓拒绝，转身离开。
"""
SCREENPLAY = """\
Title: 替身合同
Language: zh
Characters:
    林晓 | en=Lin Xiao | voice=f | age=23 | desc=倔强的实习生
    顾辰 | en=Gu Chen | voice=m | age=32 | desc=冷漠的总裁

内景. 总裁办公室 - 夜

[[shot: close, push-in]]
一份合同摔在桌上。

顾辰
签了它。

[[shot: medium, hold]]
林晓撕碎合同。

林晓
我不签。
"""


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory, ray_session):
    from pipeline.episode import run_job
    from pipeline.metering.ledger import Ledger

    work = tmp_path_factory.mktemp("api-episode")
    server = fake_ds.start(work / "media", Behaviour(moderate=("static camera",), slow_polls=1), api_key=KEY)
    server.screenplay = SCREENPLAY
    base = server.root
    (work / "job").mkdir()
    (work / "job" / "treatment.fountain").write_text(TREATMENT, encoding="utf-8")
    secrets_file = work / "secrets.env"  # Ray workers of the shared test cluster do not see a later env var
    secrets_file.write_text(f"DASHSCOPE_API_KEY={KEY}\n", encoding="utf-8")
    secrets_file.chmod(0o600)
    key = {"secrets_file": str(secrets_file), "api_key_name": "DASHSCOPE_API_KEY"}
    ds = {"base_url": f"{base}/api/v1", "poll_s": 0.05, **key}
    chat = {"base_url": f"{base}/compatible-mode/v1", **key}
    job_data = {"drama": "api-demo", "episode": "ep01", "title": "替身合同", "company": "示例影业",
                "languages": ["zh", "en"], "profile": "api", "screenplay": "treatment.fountain", "treatment": True, "seed": 7,
                "budget": {"max_cny": "50.00"},
                "stages": {"script": {"options": chat}, "translate": {"options": chat},
                           "storyboard": {"options": ds, "width": 480, "height": 832},
                           "video": {"options": {**ds, "resolution": "480p"}, "width": 480, "height": 832, "fps": 12},
                           "dub": {"options": {"base_url": ds["base_url"], **key}, "languages": ["zh", "en"]},
                           "edit": {"preset": "ultrafast"}}}
    (work / "job" / "job.yaml").write_text(yaml.safe_dump(job_data, allow_unicode=True), encoding="utf-8")
    job = load_job(work / "job" / "job.yaml", [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}"])
    ledger, mlflow_uri = f"sqlite:///{work / 'ledger.db'}", f"sqlite:///{work / 'mlflow.db'}"
    out = {"work": work, "server": server, "ledger": ledger, "mlflow": mlflow_uri, "job": job}
    with pytest.raises(Exception) as refused:
        run_job(job, quiet=True, tracking_uri=mlflow_uri, ledger_url=ledger)
    out["refused"] = refused.value
    out["submissions_first"] = dict(_submissions(server))
    server.behaviour.moderate = ()  # the provider's verdict changes (e.g. after an appeal): re-run
    out["manifest"] = run_job(job, quiet=True, tracking_uri=mlflow_uri, ledger_url=ledger)
    with Ledger.open(ledger) as led:
        out["usage"] = [e.body for e in led.entries(kind="usage")]
        out["costs"] = [e.body for e in led.entries(kind="cost")]
        out["tasks"] = [e.body for e in led.entries(kind="provider_task")]
        out["ends"] = [e.body for e in led.entries(kind="provider_task_end")]
        out["reservations"] = [e.body for e in led.entries(kind="budget_reservation")]
    yield out
    server.stop()


def _submissions(server) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in server.requests:
        if q["method"] == "POST":
            counts[q["path"]] = counts.get(q["path"], 0) + 1
    return counts


VIDEO = "/api/v1/services/aigc/video-generation/video-synthesis"
IMAGE = "/api/v1/services/aigc/text2image/image-synthesis"


def test_refused_shot_is_named_with_its_prompt_and_alone(api_runs):
    from pipeline.orchestrate import format_failure

    text = format_failure(api_runs["refused"])
    assert "video[s01-sh02]" in text and "content moderation refused shot s01-sh02" in text
    assert "林晓撕碎合同" in text and KEY not in text
    first = [u for u in api_runs["usage"] if u["job"] != api_runs["manifest"]["run_id"]]
    ok = {(u["stage"], u["shot"]) for u in first if u["status"] == "ok"}
    assert ("video", "s01-sh01") in ok and ("storyboard", "s01-sh02") in ok  # the other shot was made and kept


def test_rerun_pays_only_for_the_refused_shot(api_runs):
    m = api_runs["manifest"]
    assert m["profile"] == "api" and m["backends"]["video"] == "wan-api" and m["backends"]["dub"] == "qwen-tts-api"
    assert api_runs["submissions_first"][VIDEO] == 2  # shot 1 accepted, shot 2 refused at submission
    total = _submissions(api_runs["server"])
    assert total[VIDEO] == 3 and total[IMAGE] == 2  # the re-run submitted shot 2's clip only
    video_tasks = [t for t in api_runs["tasks"] if t["stage"] == "video"]
    assert sorted(t["shot"] for t in video_tasks) == ["s01-sh01", "s01-sh02"]
    assert len({e["task_id"] for e in api_runs["ends"]}) == len(api_runs["ends"]) == len(api_runs["tasks"])
    info = probe(api_runs["work"] / "out" / "api-demo" / "ep01" / "episode.mp4")
    video = [st for st in info["streams"] if st["codec_type"] == "video"][0]
    audio = [st for st in info["streams"] if st["codec_type"] == "audio"]
    assert (video["width"], video["height"]) == (1080, 1920) and len(audio) == 2  # zh + en dub tracks


def test_ledger_bills_the_provider_usage_once(api_runs):
    ai = [c for c in api_runs["costs"] if c["kind"] == "ai_tool"]
    by_item: dict[str, Decimal] = {}
    for c in ai:
        by_item[c["item"]] = by_item.get(c["item"], Decimal(0)) + Decimal(c["quantity"])
    assert by_item["wan2.5-i2v-preview:480p"] == Decimal(10)  # two 5 s clips, each billed once
    assert by_item["wan2.2-t2i-flash"] == Decimal(2)
    assert by_item["qwen3-tts-flash"] == Decimal(len("签了它。") + len("我不签。")) + sum(
        Decimal(len(f"[English] {t}")) for t in ("签了它。", "我不签。"))
    assert by_item["qwen-plus:input"] > 0 and by_item["qwen-plus:output"] > 0
    amount = sum(Decimal(c["amount"]) for c in ai if c["item"] == "wan2.5-i2v-preview:480p")
    assert amount == Decimal("3.00")
    for end in api_runs["ends"]:
        assert end["status"] == "succeeded" and end["result"]["result_sha256"]
    # every submission reserved its planned cost through the ledger writer first (budget.max_cny is set)
    held = sorted((r["stage"], r["shot"], Decimal(r["amount"])) for r in api_runs["reservations"])
    assert [h for h in held if h[0] == "video"] == [("video", "s01-sh01", Decimal("1.50")),
                                                    ("video", "s01-sh02", Decimal("1.50")),
                                                    ("video", "s01-sh02", Decimal("1.50"))]


def test_mlflow_and_claims_show_the_ai_tool_lines(api_runs):
    import datetime as dt

    from mlflow.tracking import MlflowClient

    from pipeline.finance.build_metered import meter_drama
    from pipeline.metering.ledger import Ledger

    client = MlflowClient(tracking_uri=api_runs["mlflow"])
    exp = client.get_experiment_by_name("api-demo")
    stages = client.search_runs([exp.experiment_id], "tags.`microdrama.kind` = 'stage' and tags.stage = 'video'")
    assert stages and stages[0].data.metrics["video_seconds"] == 5.0  # this run paid for one clip
    assert stages[0].data.metrics["cost_ai_tool_cny"] == pytest.approx(1.5)
    year = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).year
    with Ledger.open(api_runs["ledger"]) as led:
        metered = meter_drama("api-demo", year, api_runs["mlflow"], led)
    # the episode's AI spend is every run's: the refused run's paid clip and images count with the re-run's
    all_ai = sum(Decimal(c["amount"]) for c in api_runs["costs"] if c["kind"] == "ai_tool")
    rerun_ai = sum(Decimal(c["amount"]) for c in api_runs["costs"]
                   if c["kind"] == "ai_tool" and c["job"] == api_runs["manifest"]["run_id"])
    assert metered.ai_tools == all_ai > rerun_ai > 0
