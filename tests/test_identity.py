"""Reference-conditioned keyframes (FLUX.1 Kontext, SDXL + IP-Adapter) and the identity check, on tiny twins."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import tiny
from models.registry import resolve
from pipeline.script import Character, Scene, Script, Shot

pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

W, H = 48, 80  # multiples of 16, near 9:16: the backend tests stay fast


def _png(path: Path, seed: int, size=(45, 80)) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def _script(refs: dict[str, tuple[str, ...]]) -> Script:
    chars = {"林晓": Character(name="林晓", names={"en": "Lin Xiao"}, description="倔强的实习生", seed=11,
                               reference_images=refs.get("林晓", ())),
             "顾辰": Character(name="顾辰", names={"en": "Gu Chen"}, description="冷漠的总裁",
                               reference_images=refs.get("顾辰", ()))}
    shots = (Shot(id="s01-sh01", scene=1, index=1, location="办公室", characters=("林晓", "顾辰"), action="对视。"),
             Shot(id="s01-sh02", scene=1, index=2, location="办公室", characters=("林晓",), action="她笑了。"),
             Shot(id="s01-sh03", scene=1, index=3, location="城墙", characters=(), action="灯笼摇晃。"))
    return Script(title="替身", characters=chars, scenes=(Scene(number=1, heading="内景", location="办公室",
                                                                  shots=shots),))


def _digest(path: str | Path) -> str:
    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


# ---------------------------------------------------------------- keyframe backends

@pytest.mark.parametrize("name", ["flux-kontext-tiny", "sdxl-ip-adapter-tiny"])
def test_reference_backends_are_conditioned_on_the_sheet(name, tmp_path):
    a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    backend = resolve("storyboard", name)(steps=1)
    shot = _script({}).shots[0]
    with_a = backend.render(shot, _script({"林晓": (a,)}), tmp_path / "1.png", width=W, height=H, seed=3)
    again = backend.render(shot, _script({"林晓": (a,)}), tmp_path / "2.png", width=W, height=H, seed=3)
    with_b = backend.render(shot, _script({"林晓": (b,)}), tmp_path / "3.png", width=W, height=H, seed=3)
    both = backend.render(shot, _script({"林晓": (a,), "顾辰": (b,)}), tmp_path / "4.png", width=W, height=H, seed=3)
    retry = backend.render(shot, _script({"林晓": (a,)}), tmp_path / "5.png", width=W, height=H, seed=3, try_index=1)
    assert Image.open(with_a.outputs["image"]).size == (W, H)
    assert _digest(with_a.outputs["image"]) == _digest(again.outputs["image"])  # deterministic
    assert _digest(with_a.outputs["image"]) != _digest(with_b.outputs["image"])  # the reference steers the picture
    assert with_a.params["seed"] == 11  # the lead's own Character.seed
    assert retry.params["seed"] != 11 and _digest(retry.outputs["image"]) != _digest(with_a.outputs["image"])
    assert [r["character"] for r in both.params["references"]] == ["林晓", "顾辰"]
    assert both.params["references"][1]["sha256"] == hashlib.sha256(Path(b).read_bytes()).hexdigest()
    sheet_w, sheet_h = both.params["reference_sheet"]
    assert sheet_w > sheet_h and sheet_w % 16 == 0 and sheet_h % 16 == 0  # two panels side by side
    assert {u["tool"]: u["quantity"] for u in with_a.ai_usage} == {name: 1, f"{name}:step": 1}


def test_without_references_the_backends_render_from_text_and_say_so(tmp_path):
    for name in ("flux-kontext-tiny", "sdxl-ip-adapter-tiny"):
        r = resolve("storyboard", name)(steps=1).render(_script({}).shots[2], _script({}), tmp_path / f"{name}.png",
                                                        width=W, height=H, seed=3)
        assert r.params["references"] == [] and r.params["reference_sheet"] is None
        assert r.params.get("ip_adapter_scale", 0.0) == 0.0


def test_the_tiny_sdxl_twin_loads_its_adapter_through_load_ip_adapter():
    pipe = tiny.sdxl_ip_adapter(0)
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from transformers import CLIPVisionModelWithProjection

    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    procs = [p for p in pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert procs and len(procs) == sum(1 for n in pipe.unet.attn_processors if n.endswith("attn2.processor"))
    assert type(tiny.flux_kontext(0)).__name__ == "FluxKontextPipeline"


def test_real_reference_backends_load_from_weights_dirs(tmp_path):
    """The production load path (from_pretrained + load_ip_adapter, local files only) on tiny saved weights."""
    from models.hub import WeightsMissing

    tiny.flux_kontext(0).save_pretrained(tmp_path / "kontext")
    sdxl = tiny._build_sdxl(0)
    sdxl.save_pretrained(tmp_path / "sdxl")
    tiny.ip_adapter_folder(sdxl.unet, tmp_path / "ip")
    a = _png(tmp_path / "a.png", 1)
    shot, script = _script({}).shots[1], _script({"林晓": (a,)})
    k = resolve("storyboard", "flux-kontext-dev")(weights_dir=str(tmp_path / "kontext"), dtype="float32",
                                                   device="cpu", steps=1)
    r = k.render(shot, script, tmp_path / "k.png", width=W, height=H, seed=1)
    assert r.params["model"] == "black-forest-labs/FLUX.1-Kontext-dev" and Image.open(r.outputs["image"]).size == (W, H)
    s = resolve("storyboard", "sdxl-ip-adapter")(weights_dir=str(tmp_path / "sdxl"), ip_adapter_dir=str(tmp_path / "ip"),
                                                  dtype="float32", device="cpu", steps=1)
    r = s.render(shot, script, tmp_path / "s.png", width=W, height=H, seed=1)
    assert r.params["model"] == "stabilityai/stable-diffusion-xl-base-1.0" and r.params["ip_adapter_scale"] == 0.6
    with pytest.raises(WeightsMissing, match="h94/IP-Adapter"):
        resolve("storyboard", "sdxl-ip-adapter")(weights_dir=str(tmp_path / "sdxl"), ip_adapter_dir=str(tmp_path))
    with pytest.raises(WeightsMissing, match="FLUX.1-Kontext-dev"):
        resolve("storyboard", "flux-kontext-dev")(weights_dir=str(tmp_path))


# ---------------------------------------------------------------- identity check

def test_a_reference_identical_to_the_keyframe_scores_one(tmp_path):
    ident = resolve("identity", "arcface-tiny")()
    key, other = _png(tmp_path / "k.png", 5), _png(tmp_path / "o.png", 6)
    same = ident.check(key, {"林晓": [key]})["林晓"]
    assert same["score"] == pytest.approx(1.0, abs=1e-5) and same["face"] == "full-frame"
    diff = ident.check(key, {"林晓": [other]})["林晓"]["score"]
    assert -1.0 <= diff < 0.99999


def test_no_face_is_recorded_honestly_not_scored(tmp_path):
    """The Haar detector (OpenCV's trained cascade) finds no face in noise: score None with the reason."""
    ident = resolve("identity", "arcface-tiny")(detector="haar")
    key = _png(tmp_path / "k.png", 5, size=(144, 256))
    out = ident.check(key, {"林晓": [key], "顾辰": []})
    assert out["林晓"] == {"score": None, "reason": "no face found in 1 reference image(s)"}
    assert out["顾辰"]["score"] is None
    ident_ff = resolve("identity", "arcface-tiny")()
    both = ident_ff.check(key, {"林晓": [key], "顾辰": [key]})  # full-frame: the one pseudo-face is everyone's
    assert both["林晓"]["score"] == both["顾辰"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert both["顾辰"]["face"] == "full-frame" and both["顾辰"]["reason"] is None


def test_arcface_r50_needs_its_onnx_file_and_loads_it(tmp_path):
    from models.hub import WeightsMissing

    with pytest.raises(WeightsMissing, match=r"stages\.storyboard\.identity\.options\.weights_dir.*w600k_r50\.onnx"):
        resolve("identity", "arcface-r50")()
    (tmp_path / "w600k_r50.onnx").write_bytes(tiny.arcface_onnx(0))
    ident = resolve("identity", "arcface-r50")(weights_dir=str(tmp_path), detector="full-frame")
    key = _png(tmp_path / "k.png", 5)
    assert ident.check(key, {"林晓": [key]})["林晓"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert ident.model.endswith("w600k_r50.onnx")


def test_faces_are_matched_one_to_one():
    from models.image.identity import match

    assert match(np.array([[0.9, 0.8], [0.85, 0.1]])) == [1, 0]  # greedy would give both the first face
    assert match(np.array([[0.2], [0.7]])) == [None, 0]


# ---------------------------------------------------------------- the storyboard stage's check and re-renders

def _job(tmp_path: Path, backend: str = "flux-tiny", **identity):
    from pipeline.job import IdentitySettings, Job, Stages, StoryboardSettings

    board = StoryboardSettings(backend=backend, options={"steps": 1}, width=W, height=H,
                               identity=IdentitySettings(**identity) if identity else None)
    return Job(drama="ident", episode="ep01", screenplay=Path("x.fountain"), stages=Stages(storyboard=board),
               cache_dir=tmp_path / "cache", output_dir=tmp_path / "out")


def _run_stage(job, script: Script, shot_index: int, workdir: Path):
    from pipeline.orchestrate import make_aux_backends, make_backend
    from pipeline.stages import StageCall, StageRun
    from pipeline.stages.storyboard import StoryboardStage

    usage: list[tuple[str, str, float]] = []
    workdir.mkdir(parents=True, exist_ok=True)
    run = StageRun(workdir=workdir, backend=make_backend(job, "storyboard"),
                   report_usage=lambda t, u, q: usage.append((t, u, q)),
                   aux_backends=make_aux_backends(job, "storyboard"))
    shot = script.shots[shot_index]
    return StoryboardStage(job).run(StageCall(shot.id, {"shot": shot, "script": script}), run), usage


def _prerender(job, script: Script, shot_index: int, path: Path, try_index: int) -> str:
    from pipeline.stages.storyboard import shot_seed

    shot = script.shots[shot_index]
    backend = resolve("storyboard", job.stages.storyboard.backend)(steps=1)
    backend.render(shot, script, path, width=W, height=H, seed=shot_seed(job.seed, shot.id), try_index=try_index)
    return str(path)


def test_a_keyframe_like_its_reference_passes_at_once(tmp_path):
    job = _job(tmp_path, min_similarity=0.9999, max_tries=3)
    ref = _prerender(job, _script({}), 1, tmp_path / "ref.png", try_index=0)  # flux-tiny: the reference is unseen
    out, usage = _run_stage(job, _script({"林晓": (ref,)}), 1, tmp_path / "w")
    ident = out["identity"]
    assert ident["status"] == "passed" and len(ident["tries"]) == 1 and ident["chosen_try"] == 1
    assert ident["scores"]["林晓"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert usage == [("flux-tiny", "image", 1.0), ("flux-tiny:step", "step", 1.0), ("arcface-tiny", "image", 1.0)]
    assert _digest(out["image"]) == _digest(ref)


def test_below_the_threshold_the_shot_is_rerendered_with_another_seed_and_each_try_metered(tmp_path):
    job = _job(tmp_path, min_similarity=0.9999, max_tries=3)
    ref = _prerender(job, _script({}), 1, tmp_path / "ref.png", try_index=1)  # what the second try will draw
    out, usage = _run_stage(job, _script({"林晓": (ref,)}), 1, tmp_path / "w")
    tries = out["identity"]["tries"]
    assert [t["status"] for t in tries] == ["failed", "passed"] and out["identity"]["status"] == "passed"
    assert tries[0]["scores"]["林晓"]["score"] < 0.9999 <= tries[1]["scores"]["林晓"]["score"]
    assert tries[0]["seed"] != tries[1]["seed"] and out["identity"]["chosen_try"] == 2
    assert _digest(out["image"]) == _digest(tries[1]["image"]) == _digest(ref)
    assert [u for u in usage if u[1] == "image"] == [("flux-tiny", "image", 1.0), ("arcface-tiny", "image", 1.0)] * 2


def test_a_shot_that_never_passes_is_flagged_with_its_best_try(tmp_path):
    job = _job(tmp_path, min_similarity=0.99999, max_tries=3)
    other = _png(tmp_path / "other.png", 9)
    out, usage = _run_stage(job, _script({"林晓": (other,), "顾辰": (other,)}), 0, tmp_path / "w")
    ident = out["identity"]
    assert ident["status"] == "flagged" and len(ident["tries"]) == 3 and "after 3 tries" in ident["reason"]
    assert len({t["seed"] for t in ident["tries"]}) == 3 and len({_digest(t["image"]) for t in ident["tries"]}) == 3
    worst = [min(v["score"] for v in t["scores"].values() if v["score"] is not None) for t in ident["tries"]]
    assert ident["chosen_try"] == 1 + worst.index(max(worst))
    assert _digest(out["image"]) == _digest(ident["tries"][ident["chosen_try"] - 1]["image"])
    assert sum(1 for u in usage if u[0] == "flux-tiny") == 3 and sum(1 for u in usage if u[0] == "arcface-tiny") == 3


def test_no_face_and_no_reference_are_recorded_not_retried(tmp_path):
    job = _job(tmp_path, min_similarity=0.5, max_tries=3, options={"detector": "haar"})
    ref = _png(tmp_path / "ref.png", 9)
    out, usage = _run_stage(job, _script({"林晓": (ref,)}), 1, tmp_path / "w")
    assert out["identity"]["status"] == "no-face" and len(out["identity"]["tries"]) == 1
    assert out["identity"]["scores"]["林晓"]["score"] is None
    out, usage = _run_stage(job, _script({}), 1, tmp_path / "w2")
    assert out["identity"] == {"status": "unchecked", "reason": "no reference images for the shot's characters",
                               "tries": []}
    out, _ = _run_stage(_job(tmp_path), _script({"林晓": (ref,)}), 1, tmp_path / "w3")
    assert "identity" not in out  # the check is off unless configured


def test_the_cache_key_follows_the_reference_images_contents(tmp_path):
    from pipeline.stages import StageCall
    from pipeline.stages.storyboard import StoryboardStage

    job = _job(tmp_path, min_similarity=0.5)
    ref = tmp_path / "ref.png"
    _png(ref, 1)
    shot = _script({}).shots[1]
    key = lambda: StoryboardStage(job).cache_key_parts(StageCall(shot.id, {"shot": shot, "script": _script({"林晓": (str(ref),)})}))
    before = key()
    assert key() == before
    _png(ref, 2)  # the same path, a replaced sheet
    assert key() != before
    job2 = _job(tmp_path, min_similarity=0.6)
    assert StoryboardStage(job2).cache_key_parts(StageCall(shot.id, {"shot": shot, "script": _script({"林晓": (str(ref),)})})) != key()


def test_execute_puts_every_try_in_the_usage_record(tmp_path):
    """Through the cache and the meter (no Ray): one usage record whose AI usage holds every render and check
    and whose meta lists each try's seed, status and scores; a re-run is a cache hit with the same scores."""
    from pipeline.orchestrate import RunInfo, execute
    from pipeline.stages import StageCall

    job = _job(tmp_path, min_similarity=0.99999, max_tries=2)
    other = _png(tmp_path / "other.png", 9)
    script = _script({"林晓": (other,)})
    shot = script.shots[1]
    info = RunInfo(run_id="r1", job=job, cache_root=str(tmp_path / "cache"))
    res = execute(info, "storyboard", StageCall(shot.id, {"shot": shot, "script": script}))
    rec = res["record"]
    assert [u["tool"] for u in rec["ai_usage"]] == ["flux-tiny", "flux-tiny:step", "arcface-tiny"] * 2
    assert rec["meta"]["identity.status"] == "flagged" and rec["meta"]["identity.tries"] == "2"
    assert rec["meta"]["identity.scores"].startswith("try1 seed=") and "; try2 seed=" in rec["meta"]["identity.scores"]
    again = execute(info, "storyboard", StageCall(shot.id, {"shot": shot, "script": script}))
    assert again["cache_hit"] and again["outputs"]["identity"] == res["outputs"]["identity"]


# ---------------------------------------------------------------- settings, manifest, MLflow

def test_identity_settings_are_validated_with_the_field_path(tmp_path):
    from pipeline.errors import JobError
    from pipeline.job import load_job
    from pipeline.orchestrate import preflight
    from tests.tiny_jobs import places, write_job

    path = write_job(tmp_path / "j", profile="tiny")
    job = load_job(path, places(tmp_path))
    assert job.stages.storyboard.identity.min_similarity == 0.5 and job.stages.storyboard.identity.max_tries == 3
    for override, message in (("stages.storyboard.identity.min_similarity=1.5",
                               "stages.storyboard.identity.min_similarity: Input should be less than or equal to 1"),
                              ("stages.storyboard.identity.max_tries=0",
                               "stages.storyboard.identity.max_tries: Input should be greater than or equal to 1"),
                              ("stages.storyboard.identity.backend=facenet",
                               "stages.storyboard.identity.backend: unknown backend 'facenet'")):
        with pytest.raises(JobError, match=message):
            load_job(path, places(tmp_path) + [override])
    assert load_job(path, places(tmp_path) + ["stages.storyboard.identity=null"]).stages.storyboard.identity is None
    proc = load_job(path, places(tmp_path) + ["stages.storyboard.backend=procedural", "stages.storyboard.options={}"])
    assert any("stages.storyboard.identity.max_tries: 3 renders asked" in p for p in preflight(proc))
    with pytest.raises(JobError, match=r"stages\.storyboard\.identity\.options\.detector: Input should be 'haar' or "
                                       r"'full-frame' \(backend arcface-tiny\), got 'mtcnn'"):  # the schema, in validate
        load_job(path, places(tmp_path) + ["stages.storyboard.identity.options.detector=mtcnn"])


def _manifest_shots(tmp_path: Path) -> list[dict]:
    from pipeline.identity_report import shot_identity

    job = _job(tmp_path, min_similarity=0.9999, max_tries=2)
    ref = _prerender(job, _script({}), 1, tmp_path / "ref.png", try_index=0)
    other = _png(tmp_path / "other.png", 9)
    passed, _ = _run_stage(job, _script({"林晓": (ref,)}), 1, tmp_path / "a")
    flagged, _ = _run_stage(job, _script({"林晓": (other,), "顾辰": (other,)}), 0, tmp_path / "b")
    unchecked, _ = _run_stage(job, _script({}), 2, tmp_path / "c")
    return [{"id": i, "identity": shot_identity(o)} for i, o in
            (("s01-sh02", passed), ("s01-sh01", flagged), ("s01-sh03", unchecked))]


def test_manifest_summary_review_list_warnings_and_mlflow(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.identity_report import log_storyboard_run, summary, warning_lines
    from pipeline.job import IdentitySettings
    from pipeline.runner import publish_review

    shots = _manifest_shots(tmp_path)
    summ, review = summary(shots)
    assert summ["checked_shots"] == 2 and summ["renders"] == 3 and summ["rerender_rate"] == 0.5
    assert summ["by_status"] == {"passed": ["s01-sh02"], "flagged": ["s01-sh01"], "unchecked": ["s01-sh03"]}
    assert [r["shot"] for r in review] == ["s01-sh01"] and len(review[0]["images"]) == 2
    manifest = {"shots": shots, "identity": summ, "review": review}
    (line,) = warning_lines(manifest)
    assert line.startswith("warning: storyboard[s01-sh01]: identity flagged, for review: below min_similarity")
    staging = tmp_path / "pub"
    staging.mkdir()
    publish_review(manifest, staging)
    assert review[0]["images"] == ["review/s01-sh01.try1.png", "review/s01-sh01.try2.png"]
    assert all((staging / p).is_file() for p in review[0]["images"])
    json.dumps(manifest, ensure_ascii=False)  # the manifest stays JSON

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("identity-check")  # not the process's last active experiment (another test's store)
    with mlflow.start_run() as run:
        log_storyboard_run(mlflow, manifest, IdentitySettings(min_similarity=0.9999, max_tries=2))
    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params["identity.min_similarity"] == "0.9999" and data.params["identity.max_tries"] == "2"
    assert data.metrics["identity.s01-sh02.林晓"] == pytest.approx(1.0, abs=1e-5)
    history = client.get_metric_history(run.info.run_id, "identity.s01-sh01.顾辰")
    assert sorted(m.step for m in history) == [1, 2]  # one value per try
    assert data.metrics["identity_flagged_shots"] == 1 and data.metrics["identity_rerender_rate"] == 0.5
    art = client.download_artifacts(run.info.run_id, "identity/identity.json", str(tmp_path / "dl"))
    assert json.loads(Path(art).read_text("utf-8"))["review"][0]["shot"] == "s01-sh01"
