"""A two-shot episode end to end on the tiny profile (tiny random FLUX, Wan2.1, VITS and Marian on CPU) through
`run_job` on Ray: the MP4 is the product's format, the manifest names the tiny backends, the usage records carry
each model's usage (images, steps, frames, chars) and the resident actors load each model once."""
from __future__ import annotations

import json

import pytest
import yaml

from pipeline.job import load_job
from tests.media import probe

pytest.importorskip("diffusers")

SCREENPLAY = """\
Title: 总裁的替身
Language: zh
Characters:
    林晓 | en=Lin Xiao | voice=f | age=23 | desc=倔强的实习生
    顾辰 | en=Gu Chen | voice=m | age=32 | desc=顾氏集团总裁，冷漠

内景. 怀柔 顾氏集团 总裁办公室 - 夜 #huairou

[[shot: close, push-in]]
一份合同摔在桌上。顾辰盯着林晓。

顾辰
[[emotion: cold]]
签了它。
[[en: Sign it.]]

[[shot: over-shoulder, hold]]
林晓攥着衣角。

林晓
(颤抖)
为什么是我？
"""  # the second line has no [[en: …]]: marian-tiny translates it

TINY = {"script": "fountain", "translate": "marian-tiny", "storyboard": "flux-tiny", "dub": "vits-tiny",
        "video": "wan-tiny", "edit": "ffmpeg"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_session):
    from pipeline.episode import run_job

    work = tmp_path_factory.mktemp("tiny-episode")
    (work / "job").mkdir()
    (work / "job" / "episode.fountain").write_text(SCREENPLAY, encoding="utf-8")
    job_data = {"drama": "tiny-demo", "episode": "ep01", "title": "总裁的替身 · 试映", "company": "示例影业",
                "languages": ["zh", "en"], "profile": "tiny", "screenplay": "episode.fountain", "seed": 20261124,
                "stages": {"dub": {"languages": ["zh", "en"]}, "edit": {"preset": "ultrafast"}}}
    (work / "job" / "job.yaml").write_text(yaml.safe_dump(job_data, allow_unicode=True), encoding="utf-8")
    job = load_job(work / "job" / "job.yaml", [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}"])
    ledger = f"sqlite:///{work / 'ledger.db'}"
    manifest = run_job(job, quiet=True, tracking_uri=f"sqlite:///{work / 'mlflow.db'}", ledger_url=ledger)
    from pipeline.metering.ledger import Ledger

    with Ledger.open(ledger) as led:
        usage = [e.body for e in led.entries(kind="usage", where={"job": manifest["run_id"]})]
    return {"job": job, "manifest": manifest, "usage": usage, "pools": pool_replicas()}


def pool_replicas() -> dict[int, dict]:
    """Every replica of the cluster's model pools, live or retired, by pid (as the pools actor reports it)."""
    import ray

    from pipeline.pools import get_pools

    stats = ray.get(get_pools().stats.remote())
    return {r["pid"]: r for p in stats.values() for r in p["replicas"] + p["retired"] if "pid" in r}


def test_episode_is_a_vertical_h264_aac_mp4(tiny_run):
    path = tiny_run["job"].out_path / "episode.mp4"
    info = probe(path)
    (video,) = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1080, 1920)
    assert [a["codec_name"] for a in audio] == ["aac", "aac"]  # one track per dub language
    assert json.loads((path.parent / "manifest.json").read_text("utf-8"))["run_id"] == tiny_run["manifest"]["run_id"]


def test_manifest_names_the_tiny_backends(tiny_run):
    manifest = tiny_run["manifest"]
    assert manifest["profile"] == "tiny" and manifest["backends"] == TINY
    assert [s["id"] for s in manifest["shots"]] == ["s01-sh01", "s01-sh02"]
    assert not manifest["cache"]["hits"]  # a fresh cache: everything was computed
    assert manifest["mlflow"]["status"] == "logged"  # into the test's own sqlite, not the queue


def _ai(record: dict) -> dict[str, tuple[str, float]]:
    totals: dict[str, tuple[str, float]] = {}
    for u in record["ai_usage"]:
        unit, quantity = totals.get(u["tool"], (u["unit"], 0.0))
        totals[u["tool"]] = (unit, quantity + float(u["quantity"]))
    return totals


def test_usage_records_carry_the_model_usage(tiny_run):
    by_stage: dict[str, list[dict]] = {}
    for record in tiny_run["usage"]:
        by_stage.setdefault(record["stage"], []).append(record)
    assert {st: len(rs) for st, rs in by_stage.items()} == {"script": 1, "translate": 1, "storyboard": 2, "dub": 2,
                                                            "video": 2, "edit": 1}
    for stage, records in by_stage.items():
        assert all(r["backend"] == TINY[stage] and r["status"] == "ok" for r in records)
    job = tiny_run["job"]
    for r in by_stage["storyboard"]:
        steps = float(job.stages.storyboard.options["steps"])
        assert _ai(r) == {"flux-tiny": ("image", 1.0), "flux-tiny:step": ("step", steps)}
    shots = {s["id"]: s for s in tiny_run["manifest"]["shots"]}
    for r in by_stage["video"]:
        ai, frames = _ai(r), shots[r["shot"]]["frames"]
        assert ai["wan-tiny"] == ("second", pytest.approx(frames / job.stages.video.fps))
        assert ai["wan-tiny:step"] == ("step", float(job.stages.video.options["steps"]))
        unit, generated = ai["wan-tiny:frame"]
        assert unit == "frame" and generated >= frames and generated % 4 == 1  # Wan's 4k+1 frames
    for r in by_stage["dub"]:
        unit, chars = _ai(r)["vits-tiny"]
        assert unit == "char" and chars > 0
        unit, spoken = _ai(r)["vits-tiny:audio"]  # seconds of speech: at most the shot's length per dub language
        assert unit == "second" and 0 < spoken <= 2 * shots[r["shot"]]["duration_s"] + 1e-6
    assert _ai(by_stage["translate"][0])["marian-tiny"][0] == "char"  # the line without [[en: …]]


def test_resident_actors_load_each_model_once(tiny_run):
    """One replica per resident stage served the run (the tiny profile asks for 1), whose backend loaded its
    model once for both shots and whose process built each tiny model once."""
    actors = tiny_run["manifest"]["actors"]
    assert sorted(actors) == ["dub", "storyboard", "translate", "video"]
    for stage, found in actors.items():
        assert len(found) == 1, (stage, found)
        assert found[0]["loads"] == 1, (stage, found)
        assert found[0]["tiny_builds"] and all(n == 1 for n in found[0]["tiny_builds"].values()), (stage, found)
    assert len({a[0]["pid"] for a in actors.values()}) == 4  # each model in its own resident process


def test_manifest_reports_model_loads_per_actor(tiny_run):
    """The manifest's replicas are the pools' own (same pid, same load count), with this run's share of the
    executions: 1 for the translate, one per shot for the shot stages."""
    actors, pools = tiny_run["manifest"]["actors"], tiny_run["pools"]
    shots = len(tiny_run["manifest"]["shots"])
    for stage, found in actors.items():
        assert [a["loads"] for a in found] == [pools[a["pid"]]["loads"] for a in found], (stage, found)
        assert sum(a["for_run"] for a in found) == (1 if stage == "translate" else shots), (stage, found)
        assert all(a["executions"] >= a["for_run"] for a in found)
