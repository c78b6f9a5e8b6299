"""Hosted providers against local fake servers: submit, poll, 429, moderation, failure, expiry, wrong size,
resume from the ledger, budget reservation, closing records that carry billed usage, missing prices."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from models.providers import (ContentRefused, Limits, PollTimeout, ProviderError, RateLimited, SubmitUncertain,
                              TaskFailed, WrongResult, with_backoff)
from models.registry import resolve
from pipeline.metering import tasks
from pipeline.script import Script, Shot
from tests.providers import ark as fake_ark
from tests.providers import dashscope as fake_ds
from tests.providers import kling as fake_kling
from tests.providers.base import Behaviour

DS_KEY, ARK_KEY = "sk-ds-test-7f3a9c", "ark-test-key-51d2"
KL_AK, KL_SK = "ak-kling-test", "sk-kling-test-secret-0123456789abcdef"
FAST = {"poll_s": 0.02, "backoff_s": 0.01}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("provider-media")  # generated clips are reused across tests


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", DS_KEY)
    monkeypatch.setenv("ARK_API_KEY", ARK_KEY)
    monkeypatch.setenv("KLING_ACCESS_KEY", KL_AK)
    monkeypatch.setenv("KLING_SECRET_KEY", KL_SK)


@pytest.fixture
def servers(media, keys):
    started = []

    def start(kind: str, **behaviour):
        b = Behaviour(**behaviour)
        server = {"ds": lambda: fake_ds.start(media, b, api_key=DS_KEY),
                  "ark": lambda: fake_ark.start(media, b, api_key=ARK_KEY),
                  "kling": lambda: fake_kling.start(media, b, access_key=KL_AK, secret_key=KL_SK)}[kind]()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def _shot(action: str = "she signs the contract", sid: str = "s01-sh01") -> Shot:
    return Shot(id=sid, scene=1, index=1, location="office", action=action, characters=("LIN",))


def _keyframe(tmp_path: Path, w: int = 480, h: int = 832) -> Path:
    path = tmp_path / "kf.png"
    Image.new("RGB", (w, h), (30, 40, 50)).save(path)
    return path


def _wan(server, **extra):
    return resolve("video", "wan-api")(resolution="480p", base_url=server.root + "/api/v1", **FAST, **extra)


def _render(backend, tmp_path, shot=None, duration_s=3.2, fps=12):
    return backend.render(shot or _shot(), _keyframe(tmp_path), tmp_path / "clip.mkv", duration_s=duration_s,
                          fps=fps, width=270, height=480, seed=7)


def test_wan_video_submits_polls_and_meters_the_billed_seconds(servers, tmp_path):
    from models.video.camera import count_frames

    ds = servers("ds", slow_polls=3, throttle=1)
    r = _render(_wan(ds), tmp_path)
    posts = [q for q in ds.requests if q["method"] == "POST"]
    assert len(posts) == 2 and ds.submissions == 2  # one 429, then accepted once
    sent = posts[-1]
    assert sent["headers"]["authorization"] == f"Bearer {DS_KEY}" and sent["headers"]["x-dashscope-async"] == "enable"
    assert sent["body"]["model"] == "wan2.5-i2v-preview" and sent["body"]["parameters"]["size"] == "480*832"
    assert sent["body"]["parameters"]["duration"] == 5 and sent["body"]["input"]["img_url"].startswith("data:image/png")
    polls = [q for q in ds.requests if q["method"] == "GET" and q["path"].startswith("/api/v1/tasks/")]
    assert len(polls) == 4
    assert r.ai_usage == ({"tool": "wan2.5-i2v-preview:480p", "unit": "second", "quantity": 5.0},)
    assert count_frames(Path(r.outputs["clip"])) == round(3.2 * 12) == r.outputs["frames"]
    assert len(r.params["result_sha256"]) == 64 and r.params["billed_vs_planned"] == "as planned"


def test_retry_after_is_honoured_and_429_gives_up_with_a_clear_error():
    waits: list[float] = []

    class Resp:
        def __init__(self, status, hint=None):
            self.status_code, self.headers = status, ({"Retry-After": hint} if hint else {})

    answers = [Resp(429, "7"), Resp(429), Resp(200)]
    limits = Limits(retries=3, backoff_s=0.5, sleep=waits.append)
    throttled = lambda r: (float(r.headers["Retry-After"]) if "Retry-After" in r.headers else -1.0) \
        if r.status_code == 429 else None  # noqa: E731
    assert with_backoff("p", limits, lambda: answers.pop(0), throttled).status_code == 200
    assert waits[0] == 7.0 and 0.5 <= waits[1] <= 1.5  # the server's hint, then exponential backoff
    with pytest.raises(RateLimited, match="still rate limited.*concurrency"):
        with_backoff("p", Limits(retries=2, sleep=waits.append), lambda: Resp(429), throttled)


def test_seedance_tokens_from_the_task_and_wrong_size_rejected_but_billed(servers, tmp_path):
    ark = servers("ark", slow_polls=1)
    backend = resolve("video", "seedance-api")(resolution="480p", base_url=ark.root + "/api/v3", **FAST)
    r = _render(backend, tmp_path)
    sent = [q for q in ark.requests if q["method"] == "POST"][0]["body"]
    assert sent["ratio"] == "9:16" and sent["resolution"] == "480p" and sent["duration"] == 4
    assert sent["content"][1]["role"] == "first_frame"
    assert r.ai_usage[0]["quantity"] == 480 * 864 * 24 * 4 // 1024 and r.ai_usage[0]["unit"] == "token"

    bad = servers("ark", wrong_size=("signs",))
    backend = resolve("video", "seedance-api")(resolution="480p", base_url=bad.root + "/api/v3", **FAST)
    with pytest.raises(WrongResult, match="864×480, asked for 480×864") as err:
        _render(backend, tmp_path)
    assert err.value.ai_usage and err.value.ai_usage[0]["tool"] == "doubao-seedance-1-0-pro-250528"


def test_kling_signs_a_jwt_and_bills_one_clip_by_mode_and_duration(servers, tmp_path, monkeypatch):
    kl = servers("kling", slow_polls=2)
    cls = resolve("video", "kling-api")
    assert cls.planned({"mode": "pro"}, duration_s=6.0) == [{"tool": "kling-v2-1:pro:10s", "unit": "call",
                                                             "quantity": 1}]
    r = _render(cls(base_url=kl.root, **FAST), tmp_path, duration_s=3.2)
    assert r.ai_usage == ({"tool": "kling-v2-1:std:5s", "unit": "call", "quantity": 1.0},)
    sent = [q for q in kl.requests if q["method"] == "POST"][0]
    assert sent["body"]["duration"] == "5" and sent["body"]["mode"] == "std"
    import jwt

    claims = jwt.decode(sent["headers"]["authorization"].removeprefix("Bearer "), KL_SK, algorithms=["HS256"])
    assert claims["iss"] == KL_AK and claims["exp"] - claims["nbf"] == 1805
    monkeypatch.setenv("KLING_SECRET_KEY", "not-the-secret-0123456789abcdef0123")
    with pytest.raises(ProviderError, match="HTTP 401 code 1004") as err:
        _render(resolve("video", "kling-api")(base_url=kl.root, **FAST), tmp_path)
    assert "not-the-secret" not in str(err.value)
    monkeypatch.setenv("KLING_SECRET_KEY", KL_SK)
    kl.behaviour.stall_s = 1.0  # the submission times out after it was sent
    with pytest.raises(SubmitUncertain, match="may exist and be billed.*s01-sh01") as err:
        _render(cls(base_url=kl.root, timeout_s=0.2, **FAST), tmp_path)
    assert err.value.retryable is False


def test_moderation_refusal_names_the_shot_and_prompt(servers, tmp_path):
    ds = servers("ds", moderate=("knife",))
    with pytest.raises(ContentRefused) as err:
        _render(_wan(ds), tmp_path, shot=_shot("he pulls a knife", "s02-sh03"))
    text = str(err.value)
    assert "shot s02-sh03" in text and "he pulls a knife" in text and "DataInspectionFailed" in text
    assert err.value.ai_usage == () and not ds.tasks  # refused at submission: no task, nothing billed
    ark = servers("ark", moderate_task=("knife",))
    backend = resolve("video", "seedance-api")(resolution="480p", base_url=ark.root + "/api/v3", **FAST)
    with pytest.raises(ContentRefused, match="s02-sh03.*OutputVideoSensitiveContentDetected"):
        _render(backend, tmp_path, shot=_shot("he pulls a knife", "s02-sh03"))


def test_failed_task_expired_url_and_slow_task(servers, tmp_path):
    ds = servers("ds", fail=("signs",))
    with pytest.raises(TaskFailed, match="ended FAILED: InternalError.Algo"):
        _render(_wan(ds), tmp_path)
    gone = servers("ds", url_ttl_s=-1)
    with pytest.raises(ProviderError, match="HTTP 403.*expire") as err:
        _render(_wan(gone), tmp_path)
    assert err.value.ai_usage[0]["quantity"] == 5.0  # the provider billed the clip we could not fetch
    mute = servers("ds", no_usage=True)
    with pytest.raises(ProviderError, match="reports no usage, so the call cannot be metered"):
        _render(_wan(mute), tmp_path)
    slow = servers("ds", slow_polls=10_000)
    with pytest.raises(PollTimeout, match="still RUNNING.*next run polls it"):
        _render(_wan(slow, task_timeout_s=0.2), tmp_path)


def _journal(ledger, attempt: int, limit=None, shot="s01-sh01"):
    ids = {"job": "run-1", "drama": "d", "episode": "e1", "stage": "video", "shot": shot, "attempt": attempt,
           "usage_key": f"run-1/video/{shot}/attempt-{attempt}"}
    return tasks.Journal(sink=ledger, reader=ledger, ids=ids, limit=limit)


def test_a_task_left_open_is_polled_again_not_paid_twice(servers, tmp_path):
    from pipeline.metering.ledger import Ledger

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    ds = servers("ds", slow_polls=10_000)
    with tasks.bound(_journal(ledger, 1)), pytest.raises(PollTimeout):
        _render(_wan(ds, task_timeout_s=0.1), tmp_path)  # the worker "dies" while the task runs
    [task] = [e.body for e in ledger.entries(kind=tasks.TASK)]
    assert task["usage_key"].endswith("attempt-1") and task["planned"][0]["quantity"] == 5
    ds.behaviour.slow_polls = 0
    with tasks.bound(_journal(ledger, 2)):
        r = _render(_wan(ds), tmp_path)
    assert ds.submissions == 1 and r.params["resumed"] == "open" and r.params["task_id"] == task["task_id"]
    [end] = [e.body for e in ledger.entries(kind=tasks.END)]
    assert end["billed_by"].endswith("attempt-2") and end["ai_usage"] == list(r.ai_usage)
    with tasks.bound(_journal(ledger, 3)):  # the clip got lost before the cache held it: fetched, not re-billed
        again = _render(_wan(ds), tmp_path)
    assert ds.submissions == 1 and again.params["resumed"] == "ended" and again.ai_usage == ()
    for token, (path, _) in list(ds.files.items()):  # a day later the result URL has expired
        ds.files[token] = (path, 0.0)
    with tasks.bound(_journal(ledger, 4)):  # the result is gone: the request is submitted and billed again
        fresh = _render(_wan(ds), tmp_path)
    assert ds.submissions == 2 and fresh.params["resumed"] == "no" and fresh.ai_usage[0]["quantity"] == 5.0
    ledger.close()


def test_budget_reservation_refuses_a_shot_before_submission(servers, tmp_path):
    from pipeline.metering.ledger import Ledger

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    ds = servers("ds")
    with tasks.bound(_journal(ledger, 1, limit=Decimal("2.00"), shot="s01-sh01")):
        _render(_wan(ds, task_timeout_s=5), tmp_path, shot=_shot(sid="s01-sh01"))
    # 480p: 5 s × 0.30 = 1.50 reserved; its usage record is not in yet, so a second shot cannot fit
    with tasks.bound(_journal(ledger, 1, limit=Decimal("2.00"), shot="s01-sh02")), \
            pytest.raises(tasks.BudgetRefused, match=r"shot s01-sh02 not submitted.*1\.5.*> 2\.00 CNY"):
        _render(_wan(ds), tmp_path, shot=_shot("another action", sid="s01-sh02"))
    assert ds.submissions == 1
    [held] = [e.body for e in ledger.entries(kind=tasks.RESERVATION)]
    assert Decimal(held["amount"]) == Decimal("1.50")
    ledger.close()


def test_closing_record_of_a_dead_attempt_bills_the_task_it_saw_end(tmp_path):
    from pipeline.metering import attempts
    from pipeline.metering.ledger import Ledger

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    start = attempts.start_body(job="run-1", drama="d", episode="e1", stage="video", shot="s1", backend="wan-api",
                                attempt=1, gpus=0, cpus=0.5, driver={})
    ledger.append(attempts.KIND, start, attempts.start_key(start["usage_key"]))
    j = tasks.Journal(sink=ledger, reader=ledger, ids={**{k: start[k] for k in
                                                           ("job", "drama", "episode", "stage", "shot", "attempt")},
                                                        "usage_key": start["usage_key"]})
    billed = [{"tool": "wan2.5-i2v-preview:720p", "unit": "second", "quantity": 5.0}]
    j.ended("dashscope", "t-1", "succeeded", billed, {})
    assert attempts.close_run(ledger, ledger, "run-1", why="test") == 1
    record = ledger.find(start["usage_key"]).body
    assert record["ai_usage"] == billed and record["status"] == "failed"
    ai = [e.body for e in ledger.entries(kind="cost") if e.body["kind"] == "ai_tool"]
    assert [(c["item"], Decimal(c["amount"])) for c in ai] == [("wan2.5-i2v-preview:720p", Decimal("3.00"))]
    ledger.close()


def test_images_and_speech(servers, tmp_path):
    ds, ark = servers("ds", slow_polls=1), servers("ark")
    script = Script(title="t", language="zh")
    img = resolve("storyboard", "wan-t2i-api")(base_url=ds.root + "/api/v1", **FAST)
    r = img.render(_shot(), script, tmp_path / "k.png", width=480, height=832, seed=3)
    assert Image.open(r.outputs["image"]).size == (480, 832) and r.ai_usage[0] == {
        "tool": "wan2.2-t2i-flash", "unit": "image", "quantity": 1.0}
    sd = resolve("storyboard", "seedream-api")(base_url=ark.root + "/api/v3", size="720x1280", **FAST)
    r = sd.render(_shot(), script, tmp_path / "k2.png", width=360, height=640, seed=3)
    assert Image.open(r.outputs["image"]).size == (360, 640) and r.ai_usage[0]["tool"].startswith("doubao-seedream")
    tts = resolve("dub", "qwen-tts-api")(base_url=ds.root + "/api/v1")
    r = tts.speak("签了它。", tmp_path / "a.wav", lang="zh", speaker="顾辰", voice={"gender": "m"}, emotion=None)
    assert r.ai_usage == ({"tool": "qwen3-tts-flash", "unit": "char", "quantity": 4},)
    assert r.outputs["duration_s"] > 0.5 and r.params["voice"] in ("Ethan", "Dylan")
    sent = [q for q in ds.requests if q["path"].endswith("multimodal-generation/generation")][0]["body"]
    assert sent["model"] == "qwen3-tts-flash" and sent["input"]["text"] == "签了它。"


def test_profiles_price_every_billed_item_and_a_missing_price_stops_the_run(tmp_path, keys):
    import shutil

    from pipeline.finance.plan import preflight_prices
    from pipeline.job import load_job
    from pipeline.metering.prices import PriceBook

    (tmp_path / "e.fountain").write_text("Title: t\n", encoding="utf-8")
    for profile in ("api", "hybrid"):
        (tmp_path / "job.yaml").write_text(f"drama: d\nepisode: e\nprofile: {profile}\nscreenplay: e.fountain\n")
        assert preflight_prices(load_job(tmp_path / "job.yaml")) == []
    prices = tmp_path / "prices"
    prices.mkdir()
    for f in (Path(__file__).parents[1] / "configs" / "prices").glob("*.yaml"):
        text = f.read_text(encoding="utf-8")
        shutil.copy(f, prices / f.name) if "kling-v2-1:std:5s" not in text else (prices / f.name).write_text(
            text.replace("kling-v2-1:std:5s:", "kling-v2-1:std:5s-renamed:"), encoding="utf-8")
    (tmp_path / "job.yaml").write_text("drama: d\nepisode: e\nprofile: hybrid\nscreenplay: e.fountain\n")
    problems = preflight_prices(load_job(tmp_path / "job.yaml"), book=PriceBook.load(prices),
                                at=dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc))
    assert problems == ["stages.video: backend 'kling-api' bills 'kling-v2-1:std:5s', which no price table in "
                        "force prices; add it to configs/prices/ (with its source page) before running — it "
                        "would not be billed as zero"]


def _orchestrated(tmp_path, server, secrets_file, **video_options):
    """An api-profile job whose video stage talks to `server`, run through orchestrate.execute with a ledger."""
    import yaml

    from pipeline.job import load_job
    from pipeline.metering.ledger import Ledger
    from pipeline.orchestrate import RunInfo

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "e.fountain").write_text("Title: t\n", encoding="utf-8")
    options = {"base_url": server.root + "/api/v1", "secrets_file": str(secrets_file),
               "api_key_name": "DASHSCOPE_API_KEY", "resolution": "480p", **FAST, **video_options}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "drama": "d", "episode": "e1", "profile": "api", "screenplay": "e.fountain",
        "stages": {"script": {"backend": "fountain", "options": {}},
                   "video": {"options": options, "width": 270, "height": 480, "fps": 12}}}), encoding="utf-8")
    job = load_job(tmp_path / "job.yaml")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(url)
    return RunInfo(run_id="run-1", job=job, cache_root=str(tmp_path / "cache"), sink=ledger, ledger_url=url), ledger


def _video_call(tmp_path, action="she signs the contract"):
    from pipeline.stages import StageCall

    shot = _shot(action)
    return StageCall(shot.id, {"shot": shot, "storyboard": {"image": str(_keyframe(tmp_path))},
                               "dub": {"duration_s": 3.2}})


def test_orchestrated_attempts_resume_the_task_and_bill_rejected_results(servers, tmp_path):
    from pipeline.orchestrate import StageFailed, execute

    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"DASHSCOPE_API_KEY={DS_KEY}\n", encoding="utf-8")
    secrets_file.chmod(0o600)
    ds = servers("ds", slow_polls=10_000)
    info, ledger = _orchestrated(tmp_path, ds, secrets_file, task_timeout_s=0.2)
    with pytest.raises(StageFailed, match="PollTimeout"):
        execute(info, "video", _video_call(tmp_path), attempt=1)
    ds.behaviour.slow_polls = 0
    info2, _ = _orchestrated(tmp_path, ds, secrets_file)
    result = execute(info2, "video", _video_call(tmp_path), attempt=2)
    assert ds.submissions == 1 and result["outputs"]["params"]["resumed"] == "open"
    usage = {u.body["attempt"]: u.body for u in ledger.entries(kind="usage")}
    assert usage[1]["status"] == "failed" and usage[1]["ai_usage"] == []
    assert usage[2]["ai_usage"] == [{"tool": "wan2.5-i2v-preview:480p", "unit": "second", "quantity": 5.0}]

    extra = servers("ds", bill_extra_s=1)
    info4, _ = _orchestrated(tmp_path / "c", extra, secrets_file)
    execute(info4, "video", _video_call(tmp_path / "c", "she smiles"), attempt=1)
    [record] = [u.body for u in info4.sink.entries(kind="usage")]
    assert record["meta"]["billed_vs_planned"] == "wan2.5-i2v-preview:480p: planned 5 second, billed 6"
    assert record["ai_usage"][0]["quantity"] == 6.0  # metered as the provider billed it
    info4.sink.close()

    bad = servers("ds", wrong_size=("tears",))
    info3, _ = _orchestrated(tmp_path / "b", bad, secrets_file)
    with pytest.raises(StageFailed, match="WrongResult.*832×480, asked for 480×832"):
        execute(info3, "video", _video_call(tmp_path / "b", "she tears it up"), attempt=1)
    led3 = info3.sink
    [failed] = [u.body for u in led3.entries(kind="usage")]
    ai = [c.body for c in led3.entries(kind="cost") if c.body["kind"] == "ai_tool"]
    assert failed["status"] == "failed" and [(c["item"], Decimal(c["amount"])) for c in ai] == [
        ("wan2.5-i2v-preview:480p", Decimal("1.50"))]
    [end] = [e.body for e in led3.entries(kind=tasks.END)]
    assert end["status"] == "rejected" and "832×480" in end["result"]["rejected"]
    ledger.close()
    led3.close()


def test_concurrency_limit_per_provider_holds_across_threads():
    import threading
    import time

    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def send():
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return "ok"

    limits = Limits(concurrency=2)
    threads = [threading.Thread(target=with_backoff, args=("conc-test", limits, send, lambda r: None))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["peak"] == 2


def test_wan_text_to_video_and_doubao_chat_on_ark(servers, tmp_path):
    ds, ark = servers("ds"), servers("ark")
    t2v = resolve("video", "wan-api")(model="wan2.5-t2v-preview", mode="t2v", resolution="480p",
                                      base_url=ds.root + "/api/v1", **FAST)
    r = _render(t2v, tmp_path)
    sent = [q for q in ds.requests if q["method"] == "POST"][0]["body"]
    assert "img_url" not in sent["input"] and sent["model"] == "wan2.5-t2v-preview"
    assert r.ai_usage[0]["tool"] == "wan2.5-t2v-preview:480p"
    mt = resolve("translate", "llm-api")(base_url=ark.root + "/api/v3", model="doubao-1-5-pro-32k-250115",
                                         api_key_env="ARK_API_KEY")
    out = mt.translate(["签了它。"], src="zh", tgt="en", glossary={})
    assert out.outputs["texts"] == ["[English] 签了它。"]
    assert {u["tool"] for u in out.ai_usage} == {"doubao-1-5-pro-32k-250115:input", "doubao-1-5-pro-32k-250115:output"}
