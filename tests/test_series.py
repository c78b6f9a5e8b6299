"""Series bible and cast stage: every field checked, cues matched to the bible, per-shot cache keys that take
only the shot's characters, character sheets made once per series, approval before the storyboard."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from pipeline.errors import JobError, UserError
from pipeline.job import load_job
from tests.tiny_jobs import check_exactly_once, cli, ledger_entries, places

ROOT = Path(__file__).resolve().parents[1]

BIBLE = {
    "series": "stand-in",
    "title": "替身",
    "characters": {
        "林晓": {"names": {"en": "Lin Xiao"}, "description": "实习生，短发，白衬衫",
                 "voice": {"gender": "f", "age": 23}, "seed": 11},
        "顾辰": {"names": {"en": "Gu Chen"}, "description": "总裁，深色西装", "voice": {"gender": "m"}, "seed": 12},
    },
}

# no Characters: block: the cast comes from the bible; shot 3 names Gu Chen in its action only
SCREENPLAY = """\
Title: 替身
Language: zh
Languages: zh

内景. 办公室 - 夜

[[shot: close, hold, 2s]]
林晓
你好。

[[shot: medium, hold, 2s]]
顾辰
签了它。

[[shot: wide, hold, 2s]]
林晓把合同递给顾辰。
"""


def png(path: Path, width: int = 9, height: int = 16) -> Path:
    """A real (tiny, grey) PNG file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def write_series(root: Path, bible: dict | None = None, screenplay: str = SCREENPLAY, episodes: int = 1,
                 **job_fields) -> list[Path]:
    """root/series.yaml and root/epNN/{job.yaml,episode.fountain} with `series: ../series.yaml`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "series.yaml").write_text(yaml.safe_dump(bible or BIBLE, allow_unicode=True), encoding="utf-8")
    jobs = []
    for i in range(1, episodes + 1):
        folder = root / f"ep{i:02d}"
        folder.mkdir(exist_ok=True)
        (folder / "episode.fountain").write_text(screenplay, encoding="utf-8")
        job = {"drama": "stand-in", "episode": f"ep{i:02d}", "languages": ["zh"], "profile": "preview-cpu",
               "series": "../series.yaml", "screenplay": "episode.fountain", "seed": 100 + i,
               "stages": {"storyboard": {"width": 144, "height": 256}, "video": {"width": 144, "height": 256, "fps": 8},
                          "dub": {"languages": ["zh"]}, "edit": {"preset": "ultrafast"}}, **job_fields}
        (folder / "job.yaml").write_text(yaml.safe_dump(job, allow_unicode=True), encoding="utf-8")
        jobs.append(folder / "job.yaml")
    return jobs


def problems_of(tmp_path: Path, character: dict, files: dict[str, bytes] | None = None) -> str:
    bible = {"series": "s", "characters": {"林晓": character}}
    for name, data in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(bible, allow_unicode=True), encoding="utf-8")
    from pipeline import series

    with pytest.raises(JobError) as err:
        series.load(tmp_path / "series.yaml")
    return "\n".join(err.value.problems)


# ---------------------------------------------------------------- the bible: every field checked

@pytest.mark.parametrize("character, files, expected", [
    ({"reference_images": ["cast/missing.png"]}, {}, "reference_images[0]: /"),
    ({"reference_images": ["../outside.png"]}, {}, "outside the series file's folder"),
    ({"reference_images": ["face.gif"]}, {"face.gif": b"GIF89a"}, "is not one of .jpeg, .jpg, .png, .webp"),
    ({"reference_images": ["face.png"]}, {"face.png": b"not a picture"}, "content is not a PNG file"),
    ({"voice_reference": "voice.wav"}, {"voice.wav": b"ID3\x03not a wav"}, "voice_reference: voice.wav is named .wav"),
    ({"voice_reference": "voice.txt"}, {"voice.txt": b"hi"}, "voice_reference: voice.txt is not one of"),
    ({"voice_transcript": "你好"}, {}, "voice_transcript: given without voice_reference"),
    ({"description": "短发\x00白衬衫"}, {}, "characters.林晓.description: must not contain control characters"),
    ({"seed": -1}, {}, "characters.林晓.seed: Input should be greater than or equal to 0"),
    ({"seed": 2**32}, {}, "characters.林晓.seed: Input should be less than or equal to 4294967295"),
    ({"seed": 1.5}, {}, "characters.林晓.seed: Input should be a valid integer"),
    ({"names": {"English": "Lin"}}, {}, "characters.林晓.names: keys must be language codes"),
    ({"voice": {"gender": "x"}}, {}, "characters.林晓.voice: gender: 'x' is not f or m"),
    ({"look": "tall"}, {}, "characters.林晓.look: unknown key"),
])
def test_every_bible_field_is_checked_and_named(tmp_path, character, files, expected) -> None:
    text = problems_of(tmp_path, character, files)
    assert text.startswith("series.yaml: characters.林晓") and expected in text
    if "missing" in str(character):
        assert text.endswith("cast/missing.png: file not found; point it at a .png file beside the series file")


def test_bible_refuses_a_fifo_a_folder_and_shared_names(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dir.png").mkdir()
    bible = {"series": "s", "characters": {
        "林晓": {"names": {"en": "Lin"}, "reference_images": ["pipe.png", "dir.png"]},
        "顾辰": {"names": {"en": "lin"}}}}
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(bible, allow_unicode=True), encoding="utf-8")
    from pipeline import series

    with pytest.raises(JobError) as err:
        series.load(tmp_path / "series.yaml")
    text = "\n".join(err.value.problems)
    assert "reference_images[0]" in text and "reference_images[1]" in text  # neither opened as a picture
    assert "shares the name 'lin' with '林晓'" in text


def test_a_good_bible_resolves_paths_and_a_job_validates(tmp_path) -> None:
    bible = json.loads(json.dumps(BIBLE))
    bible["characters"]["林晓"]["reference_images"] = ["cast/lin.png"]
    (tmp_path / "s" / "cast").mkdir(parents=True)
    png(tmp_path / "s" / "cast" / "lin.png")
    [job_path] = write_series(tmp_path / "s", bible)
    job = load_job(job_path, places(tmp_path))
    from pipeline import series

    loaded = series.for_job(job)
    assert loaded.characters["林晓"].reference_images == (str((tmp_path / "s" / "cast" / "lin.png").resolve()),)
    assert loaded.find("gu chen") == "顾辰" and loaded.find("王五") is None
    assert loaded.state_path.name == "series.approved.json"


def test_series_path_may_not_leave_the_job_folders_parent(tmp_path) -> None:
    [job_path] = write_series(tmp_path / "a" / "s")
    with pytest.raises(JobError, match="series: ../../series.yaml is outside"):
        load_job(job_path, [*places(tmp_path), "series=../../series.yaml"])


def test_existing_single_episode_jobs_keep_their_hash() -> None:
    job = load_job(ROOT / "configs" / "episodes" / "demo" / "job.yaml")
    data = job.model_dump(mode="json", exclude={"job_dir", "output_dir", "cache_dir", "series", "cast"})
    import hashlib

    assert job.config_hash() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def test_require_approval_needs_a_series() -> None:
    with pytest.raises(JobError, match="cast.require_approval: approvals are kept per series"):
        load_job(ROOT / "configs" / "episodes" / "demo" / "job.yaml", ["cast.require_approval=true"])


# ---------------------------------------------------------------- cues matched to the bible

def test_cues_take_the_bible_cast_and_an_unknown_cue_is_named(tmp_path) -> None:
    from pipeline import series
    from pipeline.screenplay import parse
    from pipeline.stages.script import read_source

    [job_path] = write_series(tmp_path / "s")
    bible = series.for_job(load_job(job_path, places(tmp_path)))
    script = series.apply(parse(SCREENPLAY), bible)
    assert list(script.characters) == ["林晓", "顾辰"]  # bible order
    assert script.characters["顾辰"].description == "总裁，深色西装" and script.characters["顾辰"].seed == 12
    assert script.characters["林晓"].names == {"en": "Lin Xiao", "zh": "林晓"}
    assert [s.characters for s in script.shots] == [("林晓",), ("顾辰",), ("林晓", "顾辰")]

    english = SCREENPLAY.replace("Language: zh\nLanguages: zh", "Language: en").replace("林晓\n你好。", "LIN XIAO\nHello.")
    english = english.replace("顾辰\n签了它。", "GU CHEN\nSign it.").replace("林晓把合同递给顾辰。", "She hands Gu Chen the contract.")
    script = series.apply(parse(english), bible)  # cues by another of the bible's names
    assert [ln.speaker for s in script.shots for ln in s.lines] == ["林晓", "顾辰"]
    assert script.shots[2].characters == ("顾辰",)

    (tmp_path / "s" / "ep01" / "episode.fountain").write_text(SCREENPLAY + "\n王五\n我是谁？\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_source(load_job(job_path, places(tmp_path)))
    assert "the screenplay's character '王五' is not in the series bible series.yaml; add it under characters:" \
        in str(err.value)
    result = cli("validate", str(job_path), *places(tmp_path))
    assert result.exit_code == 2 and "王五" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- cache keys: only the shot's characters

def test_changing_one_character_changes_only_its_shots_keys(tmp_path) -> None:
    from pipeline import series
    from pipeline.cache import digest
    from pipeline.orchestrate import STAGES
    from pipeline.screenplay import parse
    from pipeline.stages import StageCall

    def keys(bible: dict) -> dict[str, list[str]]:
        root = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        [job_path] = write_series(root, bible)
        job = load_job(job_path, places(tmp_path))
        script = series.apply(parse(SCREENPLAY), series.for_job(job))
        out = {}
        for stage in ("storyboard", "dub"):
            obj = STAGES[stage][0](job)
            out[stage] = [digest(*obj.cache_key_parts(StageCall(s.id, {"shot": s, "script": script})))
                          for s in script.shots]
        out["cast"] = [digest(*STAGES["cast"][0](job).cache_key_parts(StageCall(f"cast:{n}", {
            "script": script, "character": n, "series": "stand-in"}))) for n in script.characters]
        return out

    before = keys(BIBLE)
    looks = json.loads(json.dumps(BIBLE))
    looks["characters"]["顾辰"]["description"] = "总裁，灰色西装，戴眼镜"
    after = keys(looks)
    changed = {st: [a != b for a, b in zip(before[st], after[st])] for st in before}
    assert changed == {"storyboard": [False, True, True], "dub": [False, False, False], "cast": [False, True]}
    voice = json.loads(json.dumps(BIBLE))
    voice["characters"]["林晓"]["voice"]["gender"] = "m"
    after = keys(voice)
    assert [a != b for a, b in zip(before["dub"], after["dub"])] == [True, False, False]  # only her line's shot


# ---------------------------------------------------------------- the cast stage on the tiny profile

def test_cast_stage_draws_a_two_view_sheet_with_tiny_flux_metered(tmp_path) -> None:
    from PIL import Image

    from pipeline import series
    from pipeline.orchestrate import RunInfo, execute
    from pipeline.screenplay import parse
    from pipeline.stages import StageCall

    [job_path] = write_series(tmp_path / "s")
    job = load_job(job_path, [*places(tmp_path), "profile=tiny", "stages.storyboard.width=144",
                              "stages.storyboard.height=256"])
    script = series.apply(parse(SCREENPLAY), series.for_job(job))
    info = RunInfo(run_id="r1", job=job, cache_root=str(tmp_path / "cache"))
    call = StageCall("cast:林晓", {"script": script, "character": "林晓", "series": "stand-in"})
    first = execute(info, "cast", call)
    out = first["outputs"]
    assert set(out["sheets"]) == {"portrait", "figure"} and out["seed"] == 11
    for path in out["sheets"].values():
        with Image.open(path) as im:
            assert im.size == (144, 256)
    assert out["digest"] == series.sheet_digest(out["sheets"])
    record = first["record"]
    assert record["stage"] == "cast" and record["shot"] == "cast:林晓" and record["backend"] == "flux-tiny"
    images = sum(u["quantity"] for u in record["ai_usage"] if u["tool"] == "flux-tiny" and u["unit"] == "image")
    assert images == 2  # one image per view, each metered
    other_episode = job.model_copy(update={"episode": "ep09", "seed": 999})  # keyed on the bible, not the episode
    again = execute(RunInfo(run_id="r2", job=other_episode, cache_root=str(tmp_path / "cache")), "cast", call)
    assert again["cache_hit"] and again["outputs"]["digest"] == out["digest"]


def test_supplied_reference_images_need_no_sheet(tmp_path) -> None:
    from pipeline.cast_cli import sheets_of

    bible = json.loads(json.dumps(BIBLE))
    bible["characters"]["林晓"]["reference_images"] = ["lin.png"]
    (tmp_path / "s").mkdir()
    png(tmp_path / "s" / "lin.png")
    [job_path] = write_series(tmp_path / "s", bible)
    found = sheets_of(load_job(job_path, places(tmp_path)))
    assert found["林晓"]["status"] == "supplied" and found["林晓"]["sheets"] == {"image1": str(tmp_path / "s" / "lin.png")}
    assert found["顾辰"]["status"] == "missing"
    result = cli("cast", "approve", str(tmp_path / "s" / "series.yaml"), "林晓", "--digest", "0" * 64)
    assert result.exit_code == 2 and "supplied images need no approval" in result.output


# ---------------------------------------------------------------- a series on Ray: approve, re-render only its shots

def test_series_run_stops_for_approval_then_rerenders_only_the_changed_characters_shots(tmp_path, ray_session,
                                                                                       monkeypatch) -> None:
    from pipeline.episode import run_job
    from pipeline.series import CastNotApproved

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "s"
    ep1, ep2 = write_series(root, episodes=2, cast={"require_approval": True}, output_dir=str(tmp_path / "out"),
                            cache_dir=str(tmp_path / "cache"))
    env = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    job = load_job(ep1)

    with pytest.raises(CastNotApproved) as stop:  # sheets made, metered, then a clean stop before the storyboard
        run_job(job, quiet=True, **env)
    text = str(stop.value)
    assert stop.value.exit_code == 5 and "林晓" in text and "顾辰" in text
    assert f"microdrama cast approve {root / 'series.yaml'} 林晓 --digest " in text
    assert not ledger_entries(env["ledger_url"], "usage", stage="storyboard")
    assert len(ledger_entries(env["ledger_url"], "usage", stage="cast")) == 2
    assert not job.out_path.exists()

    digest = text.split("林晓 --digest ")[1].split()[0]
    assert cli("cast", "approve", str(root / "series.yaml"), "Lin Xiao", "--digest", digest).exit_code == 0
    status = cli("cast", "status", str(ep2), "--json")  # episode 2 finds the series' sheets episode 1 made
    assert status.exit_code == 0, status.output
    assert {n: e["status"] for n, e in json.loads(status.output).items()} == {"林晓": "approved", "顾辰": "generated"}
    result = cli("cast", "approve", str(root / "series.yaml"), "顾辰", "--job", str(ep2))
    assert result.exit_code == 0 and result.output.startswith("approved: 顾辰 "), result.output

    first = run_job(job, quiet=True, **env)
    assert {n: e["status"] for n, e in first["cast"].items()} == {"林晓": "approved", "顾辰": "approved"}
    assert all(e["cache_hit"] for e in first["cast"].values())  # made once, by the stopped run
    for entry in first["cast"].values():
        assert all((job.out_path / p).is_file() for p in entry["sheets"].values())
    check_exactly_once(env["ledger_url"])

    import mlflow

    mlflow.set_tracking_uri(env["tracking_uri"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.stage = 'cast'")
    assert {r.data.tags["cast.01.name"]: r.data.tags["cast.01.status"] for r in runs} == {"林晓": "approved"}

    bible = json.loads(json.dumps(BIBLE))
    bible["characters"]["顾辰"]["voice"]["gender"] = "f"  # recast: his figure and his voice change
    (root / "series.yaml").write_text(yaml.safe_dump(bible, allow_unicode=True), encoding="utf-8")
    again = run_job(load_job(ep1, ["cast.require_approval=false"]), quiet=True, **env)
    hits = {s["id"]: s["cache_hit"] for s in again["shots"]}
    assert hits == {"s01-sh01": {"storyboard": True, "dub": True, "video": True},  # 林晓 alone: all cached
                    "s01-sh02": {"storyboard": False, "dub": False, "video": False},  # he speaks
                    "s01-sh03": {"storyboard": False, "dub": True, "video": False}}  # he is seen, silent
    assert {n: (e["status"], e["cache_hit"]) for n, e in again["cast"].items()} == {
        "林晓": ("approved", True), "顾辰": ("generated", False)}  # his new look awaits approval again


def test_translation_glossary_takes_the_bible_names(tmp_path) -> None:
    from pipeline import series
    from pipeline.screenplay import parse
    from pipeline.stages.translate import _glossary, bible_names

    [job_path] = write_series(tmp_path / "s")
    job = load_job(job_path, places(tmp_path))
    script = parse(SCREENPLAY)  # no Characters: block, so the screenplay alone knows no English names
    assert _glossary(script, "zh", "en", {}) == {}
    assert _glossary(script, "zh", "en", {}, bible_names(job)) == {"林晓": "Lin Xiao", "顾辰": "Gu Chen"}
    assert series.for_job(job).characters["林晓"].names == {"en": "Lin Xiao"}


def test_bible_goes_through_the_bounded_reader(tmp_path) -> None:
    from pipeline import series

    bad = tmp_path / "series.yaml"
    bad.write_text("series: s\ncharacters:\n  林晓: {seed: 1}\n  林晓: {seed: 2}\n", encoding="utf-8")
    with pytest.raises(JobError, match="duplicate|twice"):
        series.load(bad)
    bad.write_bytes(b"series: s\ncharacters: {\xff: {}}\n")
    with pytest.raises(JobError, match="not UTF-8"):
        series.load(bad)
    bad.write_text("series: s\ncharacters: {}\n", encoding="utf-8")
    with pytest.raises(JobError, match="characters"):
        series.load(bad)
