"""Handoff from one short preview episode (3 shots, zh + en dubs, 144×256 pictures at 24 fps): the OTIO and
FCP X / FCP 7 XML timelines read back frame-exact against the manifest, the JianYing draft read back with
pyJianYingDraft's own reader, the covers, one delivery file per preset checked with ffprobe/ebur128 against
the preset, and `microdrama edit --timeline` rendering an edited cut back, metered to the episode."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.media import integrated_loudness, probe
from tests.tiny_jobs import cli

otio = pytest.importorskip("opentimelineio")

SCREENPLAY = """\
Title: 试映
Language: zh
Characters:
    林晓 | en=Lin Xiao | voice=f | age=23 | desc=实习生
    顾辰 | en=Gu Chen | voice=m | age=32 | desc=总裁

内景. 办公室 - 夜

[[shot: close, push-in]]
顾辰
签了它。
[[en: Sign it.]]

[[shot: medium, hold]]
林晓
为什么是我？
[[en: Why me?]]

[[shot: wide, pan-left]]
顾辰
明天见。
[[en: See you tomorrow.]]
"""

# a preset beside the job whose ceiling, frame-rate range, layout and loudness all differ from the master,
# so the encode has to obey each of them
TIGHT = {"name": "tight", "platform": "Test platform",
         "video": {"codec": "h264", "profile": "main", "level": "4.0", "width": 720, "height": 1280,
                   "fps": {"min": 25, "max": 30, "conform": 25}, "max_kbps": 150, "buffer_s": 1.0},
         "audio": {"kbps": 64, "sample_rate": 44100, "layout": "mono", "loudness_lufs": -20.0, "true_peak_db": -2.0},
         "max_duration_s": 30, "max_bytes": 400_000,
         "cover": {"sizes": [[720, 1280]], "safe_area": {"top": 0.2, "bottom": 0.3, "left": 0.1, "right": 0.2}},
         "sources": [{"covers": ["all"], "note": "test preset"}]}
FPS = 24


@pytest.fixture(scope="module")
def episode(tmp_path_factory, ray_session):
    from pipeline.episode import run_job
    from pipeline.job import load_job

    work = tmp_path_factory.mktemp("handoff")
    (work / "job").mkdir()
    (work / "job" / "episode.fountain").write_text(SCREENPLAY, encoding="utf-8")
    (work / "job" / "tight.yaml").write_text(yaml.safe_dump(TIGHT, allow_unicode=True), encoding="utf-8")
    job = {"drama": "handoff-demo", "episode": "ep01", "title": "总裁的替身 第一集", "company": "示例影业",
           "languages": ["zh", "en"], "profile": "preview-cpu", "screenplay": "episode.fountain", "seed": 7,
           "delivery": ["douyin", "reelshort", "tight.yaml"],
           "stages": {"storyboard": {"width": 144, "height": 256}, "video": {"width": 144, "height": 256, "fps": FPS},
                      "dub": {"languages": ["zh", "en"], "min_shot_s": 1.5}, "edit": {"preset": "ultrafast"}}}
    (work / "job" / "job.yaml").write_text(yaml.safe_dump(job, allow_unicode=True), encoding="utf-8")
    places = [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}"]
    j = load_job(work / "job" / "job.yaml", places)
    urls = {"ledger": f"sqlite:///{work / 'ledger.db'}", "mlflow": f"sqlite:///{work / 'mlflow.db'}"}
    manifest = run_job(j, quiet=True, tracking_uri=urls["mlflow"], ledger_url=urls["ledger"])
    return {"work": work, "job": j, "manifest": manifest, "out": j.out_path.resolve(), "places": places, **urls}


def frame_count(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())


def frame_md5(path: str, index: int) -> str:
    """MD5 of one decoded frame's pixels (rawvideo), to compare frames across containers and cuts."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-vf", f"select=eq(n\\,{index})",
                          "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"], capture_output=True,
                         check=True).stdout
    assert raw, f"no frame {index} in {path}"
    return hashlib.md5(raw).hexdigest()


def check_cut(tl, manifest: dict, languages: list[str]) -> None:
    """Every shot clip's source range and place on the timeline, frame-exact against the manifest."""
    video = tl.video_tracks()
    shots = list(video[0])
    assert [c.name for c in shots] == [s["id"] for s in manifest["shots"]]
    for clip, shot in zip(shots, manifest["shots"]):
        rng = clip.source_range
        assert rng.start_time.rate == FPS and rng.duration.rate == FPS
        assert rng.start_time.value == shot.get("source_in", 0)
        assert rng.duration.value == shot["frames"]
        placed = clip.range_in_parent()
        assert placed.start_time.value == round(shot["start"] * FPS)
        path = Path(otio.url_utils.filepath_from_url(clip.media_reference.target_url))
        assert path.is_file(), path
        assert clip.media_reference.available_range.duration.value == frame_count(path)
    assert len(video) == 2 and list(video[1])[0].source_range.duration.value == 3 * FPS  # AI label, 3 s
    audio = tl.audio_tracks()
    assert len(audio) == len(languages)
    for track in audio:
        assert [(c.source_range.start_time.value, c.source_range.duration.value) for c in track] == \
            [(s.get("source_in", 0), s["frames"]) for s in manifest["shots"]]
        for c in track:
            assert Path(otio.url_utils.filepath_from_url(c.media_reference.target_url)).is_file()


def test_otio_and_nle_xml_read_back_frame_exact(episode):
    out, manifest = episode["out"], episode["manifest"]
    outputs = json.loads((out / "manifest.json").read_text("utf-8"))["outputs"]
    assert outputs["otio"] == {"otio": "episode.otio", "fcpx_xml": "episode.fcpxml", "fcp_xml": "episode.xml"}
    assert sum(s["frames"] for s in manifest["shots"]) == frame_count(out / "episode.mp4")
    for name in outputs["otio"].values():
        check_cut(otio.adapters.read_from_file(str(out / name)), manifest, ["zh", "en"])
    tl = otio.adapters.read_from_file(str(out / "episode.otio"))
    assert tl.metadata["microdrama"]["subtitles"]["en"]["srt"] == str(out / "episode.en.srt")
    # the published media are the lossless clips remuxed, bit for bit: same pixels as the source frames
    doc = json.loads((out / "timeline.json").read_text("utf-8"))
    shot = doc["shots"][1]
    assert frame_md5(shot["media"], 7) == frame_md5(shot["source"], 7)


@pytest.mark.parametrize("adapter,name", [("fcp_xml", "episode.xml"), ("fcpx_xml", "episode.fcpxml")])
def test_nle_xml_cut_maps_back_to_shots(episode, tmp_path, adapter, name):
    """FCP XML keeps no OTIO metadata: a cut saved from Premiere/Final Cut is matched to its shots by clip
    name, its trims kept frame-exact, and found the episode it came from by its media."""
    from pipeline.handoff import otio_timeline, reedit, timeline

    out = episode["out"]
    tl = otio.adapters.read_from_file(str(out / name))
    for track in [tl.video_tracks()[0], *tl.audio_tracks()]:  # picture and its linked dub clips, as an NLE does
        first, second = list(track)[:2]
        second.source_range = otio.opentime.TimeRange(otio.opentime.RationalTime(3, FPS),
                                                      otio.opentime.RationalTime(10, FPS))
        del track[:]
        track.extend([second, first])
    first, second = list(tl.video_tracks()[0])[::-1]
    cut_file = tmp_path / name
    otio.adapters.write_to_file(tl, str(cut_file), adapter_name=adapter)
    meta, cut = otio_timeline.read_cut(cut_file)
    published = reedit.find_published(cut_file, meta, cut)
    assert published == out / "timeline.json"
    doc = timeline.read(published)
    shots = reedit.match(cut, doc, cut_file)
    assert [(s["id"], s["trim"]) for s in shots] == [
        (second.name, {"in": 3, "frames": 10}), (first.name, {"in": 0, "frames": first.source_range.duration.value})]
    assert all(Path(s["clip"]).suffix == ".mkv" for s in shots)  # the lossless originals, not the remuxes


def test_jianying_draft_reads_back(episode):
    from pipeline.handoff import jianying

    out, manifest = episode["out"], episode["manifest"]
    draft = jianying.read(out / "jianying", "handoff-demo-ep01")
    assert (draft.width, draft.height, draft.fps) == (1080, 1920, FPS)
    tracks = {t.name: t for t in draft.imported_tracks}
    assert set(tracks) == {"shots", "dub-zh", "dub-en", "subtitles-zh", "subtitles-en", "ai-label"}
    us = lambda f: round(f * 1_000_000 / FPS)  # noqa: E731
    for name in ("shots", "dub-zh", "dub-en"):
        segs = tracks[name].segments
        assert [(s.target_timerange.start, s.target_timerange.duration) for s in segs] == \
            [(us(round(sh["start"] * FPS)), us(round(sh["start"] * FPS) + sh["frames"]) - us(round(sh["start"] * FPS)))
             for sh in manifest["shots"]]
        assert all(s.source_timerange.start == 0 for s in segs)
    materials = draft.content["materials"]
    paths = [m["path"] for m in materials["videos"] + materials["audios"]]
    assert len(paths) == 9 and all(Path(p).is_file() and str(out) in p for p in paths)
    texts = [json.loads(t["content"])["text"] for t in materials["texts"]]
    for lang, first in (("zh", "签了它。"), ("en", "Sign it.")):
        assert len(tracks[f"subtitles-{lang}"].segments) == 3
        assert first in texts
    assert "AI生成" in texts and tracks["ai-label"].segments[0].target_timerange.duration == us(3 * FPS)
    meta = json.loads((out / "jianying" / "handoff-demo-ep01" / "draft_meta_info.json").read_text("utf-8"))
    assert meta["draft_name"] == "handoff-demo-ep01" and meta["tm_duration"] == draft.duration
    assert (out / "jianying" / "handoff-demo-ep01" / meta["draft_cover"]).is_file()


def test_draft_materials_read_from_many_threads(tmp_path):
    """A batch driver publishes episodes from threads; pymediainfo's option reset is process-wide (it
    crashed or returned empty reports when two drafts read media at once), so materials are read one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    import pyJianYingDraft as jy

    from pipeline.handoff.jianying import _material

    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x112:rate=24",
                    "-t", "1", "-c:v", "libx264", str(clip)], check=True)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: _material(jy.VideoMaterial, str(clip), 24, 24), range(200)))
    assert {(m.width, m.height) for m in found} == {(64, 112)}
    assert all(m.duration >= 1_000_000 for m in found)


def test_covers_from_keyframes_with_title_in_safe_area(episode):
    from PIL import Image

    out = episode["out"]
    doc = json.loads((out / "timeline.json").read_text("utf-8"))
    info = doc["covers"]
    assert [c["shot"] for c in info["candidates"]] == [s["id"] for s in doc["shots"]]
    assert info["chosen"]["shot"] == max(info["candidates"], key=lambda c: c["score"])["shot"]
    assert set(info["covers"]) == {"1080x1920", "1080x1440", "720x1280"}  # douyin/reelshort ask for 3:4 too
    for key, cover in info["covers"].items():
        w, h = map(int, key.split("x"))
        img = Image.open(out / Path(cover["file"]).name)
        assert img.size == (w, h) and img.format == "JPEG"
        x0, y0, x1, y1 = cover["safe_area"]
        assert (x0, y0) == (round(w * 0.1), round(h * 0.2)) and (x1, y1) == (round(w * 0.8), round(h * 0.7))
        for box in cover["title_boxes"] + [cover["label_box"]]:
            assert x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1, (key, box)
        # the title is drawn: its box is bright text on a darkened band, unlike the same spot in the frame
        band = img.convert("L").crop(tuple(cover["title_boxes"][0]))
        assert max(band.get_flattened_data()) > 240 and min(band.get_flattened_data()) < 40


@pytest.mark.parametrize("name", ["douyin", "reelshort", "tight"])
def test_delivery_file_meets_its_preset(episode, name):
    from pipeline.handoff import delivery

    out = episode["out"]
    preset = delivery.load(name if name != "tight" else "tight.yaml", episode["job"].job_dir)
    path = out / "delivery" / f"{name}.mp4"
    info = probe(path)
    v = next(s for s in info["streams"] if s["codec_type"] == "video")
    a = next(s for s in info["streams"] if s["codec_type"] == "audio")
    fps = delivery.output_fps(preset, FPS)
    assert (v["width"], v["height"]) == (preset.video.width, preset.video.height)
    assert v["r_frame_rate"] == f"{fps}/1"
    assert v["codec_name"] == {"h264": "h264", "h265": "hevc"}[preset.video.codec]
    assert v["profile"].lower() == preset.video.profile
    level = float(preset.video.level)
    assert v["level"] == (round(level * 10) if preset.video.codec == "h264" else round(level * 30))
    duration = float(info["format"]["duration"])
    assert duration <= preset.max_duration_s and abs(duration - episode["manifest"]["duration_s"]) < 0.1
    assert path.stat().st_size <= preset.max_bytes
    # bitrate ceiling: what the VBV model guarantees — bits in any 1 s window ≤ ceiling × 1 s + buffer
    timeline = json.loads((out / "timeline.json").read_text("utf-8"))["delivery"][name]
    ceiling = timeline["video_kbps_ceiling"] * 1000
    assert ceiling <= preset.video.max_kbps * 1000
    pkts = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,size",
                           "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.split()
    packets = sorted((float(t), int(s)) for t, s in (p.split(",") for p in pkts))
    buffer_bits = timeline["bufsize_kbit"] * 1000
    for t0, _ in packets:
        window = sum(size * 8 for t, size in packets if t0 <= t < t0 + 1.0)
        assert window <= ceiling + buffer_bits, (name, t0, window)
    assert a["codec_name"] == "aac" and int(a["sample_rate"]) == preset.audio.sample_rate
    assert a["channel_layout"] == preset.audio.layout and a["channels"] == (2 if preset.audio.layout == "stereo" else 1)
    assert abs(integrated_loudness(path) - preset.audio.loudness_lufs) <= 1.0
    assert "AIGC" in info["format"]["tags"]  # the implicit AI label travels with every delivery


def test_tight_preset_binds(episode):
    """The test preset's ceiling is far below what the master's quality would take: the cap is what held it."""
    out = episode["out"]
    master = probe(out / "episode.mp4")["format"]
    tight = probe(out / "delivery" / "tight.mp4")["format"]
    assert int(master["bit_rate"]) > 4 * 150_000
    assert int(tight["bit_rate"]) < 150_000 + 64_000 + 30_000


def test_unknown_delivery_preset_is_a_clear_error(tmp_path):
    from tests.tiny_jobs import write_job

    job = write_job(tmp_path, delivery=["douyin", "tiktokk"])
    result = cli("validate", str(job))
    assert result.exit_code == 2
    assert "delivery[1]: unknown delivery preset 'tiktokk'; choose one of: douyin, dramabox, hongguo, kuaishou, " \
           "reelshort" in result.output


def test_edit_timeline_out_of_range_is_a_clear_error(episode, tmp_path):
    tl = otio.adapters.read_from_file(str(episode["out"] / "episode.otio"))
    clip = list(tl.video_tracks()[0])[0]
    clip.source_range = otio.opentime.TimeRange(otio.opentime.RationalTime(5, FPS),
                                                otio.opentime.RationalTime(clip.source_range.duration.value, FPS))
    edited = tmp_path / "over.otio"
    otio.adapters.write_to_file(tl, str(edited))
    result = cli("edit", "--timeline", str(edited), *episode["places"], "--ledger", episode["ledger"])
    assert result.exit_code == 2
    assert f"clip 1 ({clip.name}) uses frames 5–" in result.output and "Traceback" not in result.output


def test_edit_timeline_renders_the_cut_back_metered_to_the_episode(episode, tmp_path):
    """Reorder (last shot first) and trim (shot 1 to its frames 10–29) in the OTIO, render it back."""
    import mlflow

    from pipeline.metering.ledger import Ledger

    out, before = episode["out"], episode["manifest"]
    tl = otio.adapters.read_from_file(str(out / "episode.otio"))
    track = tl.video_tracks()[0]
    c1, c2, c3 = list(track)
    c1.source_range = otio.opentime.TimeRange(otio.opentime.RationalTime(10, FPS), otio.opentime.RationalTime(20, FPS))
    del track[:]
    for c in (c3, c1, c2):
        track.append(c)
    edited = tmp_path / "edited.otio"  # an editor saves the cut elsewhere
    otio.adapters.write_to_file(tl, str(edited))
    result = cli("edit", "--timeline", str(edited), *episode["places"], "delivery=[]",  # deliveries: tested above
                 "--ledger", episode["ledger"], "--tracking-uri", episode["mlflow"], "-q")
    assert result.exit_code == 0, result.output
    after = json.loads((out / "manifest.json").read_text("utf-8"))
    ids = [s["id"] for s in before["shots"]]
    assert [s["id"] for s in after["shots"]] == [ids[2], ids[0], ids[1]]
    frames = [before["shots"][2]["frames"], 20, before["shots"][1]["frames"]]
    assert [s["frames"] for s in after["shots"]] == frames and after["shots"][1]["source_in"] == 10
    assert frame_count(out / "episode.mp4") == sum(frames)
    assert after["reedit"]["previous_run"] == before["run_id"] and after["run_id"] != before["run_id"]
    # the new cut's own timeline is frame-exact too, still pointing at the shots' full media
    check_cut(otio.adapters.read_from_file(str(out / "episode.otio")), after, ["zh", "en"])
    doc = json.loads((out / "timeline.json").read_text("utf-8"))
    cut = doc["shots"][1]
    assert frame_md5(cut["clip"], 0) == frame_md5(cut["source"], 10)  # the trim is lossless and frame-exact
    assert frame_md5(cut["clip"], 19) == frame_md5(cut["source"], 29)
    # its dialogue moved with it: the line began 0.4 s into the shot, 10 frames were cut
    line = before["shots"][0]["lines"][0]["timing"]["zh"]
    assert cut["lines"][0]["timing"]["zh"][0] == pytest.approx(max(line[0] - 10 / FPS, 0), abs=1e-3)
    # metered to the episode: one edit usage record and its cost lines under the new run, same drama/episode
    with Ledger.open(episode["ledger"]) as led:
        usage = [e.body for e in led.entries(kind="usage", where={"job": after["run_id"]})]
        costs = [e.body for e in led.entries(kind="cost", where={"job": after["run_id"]})]
    assert [(u["stage"], u["drama"], u["episode"]) for u in usage] == [("edit", "handoff-demo", "ep01")]
    assert costs and after["cost"]["cost_lines"] == len(costs)
    client = mlflow.tracking.MlflowClient(episode["mlflow"])
    exp = client.get_experiment_by_name("handoff-demo")
    runs = client.search_runs([exp.experiment_id], "tags.episode = 'ep01' and tags.`microdrama.kind` = 'episode'")
    assert {r.data.tags["microdrama.run_id"] for r in runs} == {before["run_id"], after["run_id"]}
    # finance: the re-cut renders only the edit stage, so the first run's other stages are in the final episode
    # (the re-cut's base); only the first run's own edit is superseded rework
    from pipeline.finance.build_metered import meter_drama
    from pipeline.finance.attribution import total

    base = {r.data.tags["microdrama.run_id"]: r.data.tags.get("microdrama.base_run") for r in runs}
    assert base[after["run_id"]] == before["run_id"]
    with Ledger.open(episode["ledger"]) as led:
        metered = meter_drama("handoff-demo", None, episode["mlflow"], led)
        first = led.entries(kind="cost", where={"job": before["run_id"]})
        stages = {e.body["idempotency_key"]: e.body["stage"] for e in led.entries(kind="usage")}
    superseded = [ln for ln in metered.attributed if ln.category == "superseded"]
    assert superseded and {stages[ln.body["usage_key"]] for ln in superseded} == {"edit"}
    carried = [ln for ln in metered.attributed if ln.job == before["run_id"] and ln.category == "final"]
    assert {stages[ln.body["usage_key"]] for ln in carried} >= {"storyboard", "video", "dub"}
    assert all(ln.attributed_to == after["run_id"] for ln in carried)
    recut = [ln for ln in metered.attributed if ln.job == after["run_id"]]
    assert sorted(ln.entry.index for ln in metered.attributed) == sorted(
        ln.entry.index for ln in carried + superseded + recut)  # every line once, in one category
    assert all(ln.category == "final" for ln in recut) and total(carried) > 0
    assert sorted(e.index for e in first) == sorted(ln.entry.index for ln in carried + superseded)
