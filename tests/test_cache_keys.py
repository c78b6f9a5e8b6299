"""Every cache key covers what changes its output, and nothing else: each screenplay and job field is
changed in turn and exactly the stage executions that must re-render get a new key.

Keys are computed the way the orchestrator computes them (`digest(code_version, *cache_key_parts)`),
without Ray. The script and translate stages really run (they are cheap and their output is what the
per-shot stages read); storyboard, dub and video outputs are stood in for by files whose bytes are their
key — an execution with a new key is assumed to make new bytes, so its dependants must re-render too.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cache import digest
from pipeline.job import load_job
from pipeline.orchestrate import code_version, make_backend
from pipeline.stages import StageCall, StageRun
from pipeline.stages.dub import DubStage
from pipeline.stages.edit import EditStage
from pipeline.stages.script import ScriptStage, load_script
from pipeline.stages.storyboard import StoryboardStage
from pipeline.stages.translate import TranslateStage
from pipeline.stages.video import VideoStage

TTS = "dub"  # the settings section naming the dub stage's voice backend

SCREENPLAY = """\
Title: 钥匙测试
Language: zh
Languages: zh, en
Characters:
    林晓 | en=Lin Xiao | voice=f | desc=倔强的实习生
    顾辰 | en=Gu Chen | voice=m | desc=冷漠的总裁

/* a writer's note */

内景. 办公室 - 夜

[[shot: close, push-in]]
顾辰俯身，盯着桌上的合同。

顾辰
(看着 她)
[[emotion: cold]]
签了它。
[[en: Sign it.]]

[[shot: medium, hold]]
林晓
(颤抖)
为什么是我？
[[en: Why me?]]

外景. 古城墙 - 夜

[[shot: wide, pan-right, 3s]]
红灯笼在风里摇晃。
"""
JOB = """\
drama: keys
episode: ep01
title: 钥匙 · 第1集
company: 示例影业有限公司
languages: [zh, en]
profile: {profile}
screenplay: episode.fountain
seed: 7
"""
A, B, C = "s01-sh01", "s01-sh02", "s02-sh01"  # 顾辰 speaks over action; 林晓 speaks, no action; no one, 3 s
SHOTS = (A, B, C)
SMALL = ["stages.storyboard.width=144", "stages.storyboard.height=256", "stages.video.width=144",
         "stages.video.height=256", "stages.video.fps=8"]


def shot(stage: str, *ids: str) -> set[str]:
    return {f"{stage}[{i}]" for i in ids}


def per_shot(*ids: str, stages: tuple[str, ...] = ("storyboard", "dub", "video")) -> set[str]:
    return set().union(*(shot(st, *ids) for st in stages))


def keys(root: Path, name: str, *, screenplay: str = SCREENPLAY, overrides: list[str] = (),
         profile: str = "preview-cpu") -> dict[str, str]:
    """Every stage execution's cache key for one version of the episode (and the edit's ProduceID)."""
    work = root / name
    work.mkdir()
    (work / "episode.fountain").write_text(screenplay, encoding="utf-8")
    (work / "job.yaml").write_text(JOB.format(profile=profile), encoding="utf-8")
    job = load_job(work / "job.yaml", [f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}", *SMALL,
                                       *overrides])
    out: dict[str, str] = {}

    def run(stage, label: str, call: StageCall, backend_stage: str | None = None) -> dict:
        out[label] = digest(code_version(type(stage)), *stage.cache_key_parts(call))
        if backend_stage is None:
            return {}
        staging = work / label
        staging.mkdir()
        return stage.run(call, StageRun(workdir=staging, backend=make_backend(job, backend_stage),
                                        report_usage=lambda *a: None))

    def stand_in(label: str, suffix: str) -> str:
        path = work / f"{label}{suffix}"
        path.write_text(out[label])  # the bytes a render would make: new key, new bytes
        return str(path)

    scripted = run(ScriptStage(job), "script", StageCall(None), "script")
    translated = run(TranslateStage(job), "translate", StageCall(None, {"script": scripted}), "translate")
    script = load_script(translated)
    assert [s.id for s in script.shots] == list(SHOTS)
    edit_shots = []
    for s in script.shots:
        base = StageCall(s.id, {"shot": s, "script": script})
        run(StoryboardStage(job), f"storyboard[{s.id}]", base)
        board = {"image": stand_in(f"storyboard[{s.id}]", ".png")}
        dub_stage = DubStage(job)
        run(dub_stage, f"dub[{s.id}]", base)
        label = f"dub[{s.id}]"
        dub = {"audio": {lang: stand_in(label, f".{lang}.wav") for lang in dub_stage.languages},
               "duration_s": 1 + int(out[label][:3], 16) / 1000,
               "lines": [{"speaker": ln.speaker, "text": dict(ln.text), "emotion": ln.emotion} for ln in s.lines]}
        run(VideoStage(job), f"video[{s.id}]", StageCall(s.id, {"shot": s, "storyboard": board, "dub": dub}))
        edit_shots.append({"id": s.id, "clip": stand_in(f"video[{s.id}]", ".mkv"), "audio": dub["audio"],
                           "lines": dub["lines"], "duration_s": dub["duration_s"]})
    edit = StageCall(None, {"shots": edit_shots})
    run(EditStage(job), "edit", edit)
    out["ProduceID"] = EditStage(job).produce_id(edit)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("keys")
    return root, keys(root, "base")


def rerendered(base, name: str, **change) -> set[str]:
    root, before = base
    after = keys(root, name, **change)
    assert set(after) == set(before)
    return {label for label in before if label != "ProduceID" and after[label] != before[label]}


TEXT = {"script", "translate"}  # any screenplay edit re-reads the file; translate re-runs when its output may differ

SCREENPLAY_CHANGES = {
    # the procedural panel draws dialogue (a shot without action is captioned with its first line): the
    # shot's storyboard re-renders with its dub, video and the edit
    "dialogue": (("为什么是我？", "凭什么是我？"), TEXT | per_shot(B) | {"edit"}),
    "translation": (("[[en: Why me?]]", "[[en: But why me?]]"), TEXT | per_shot(B) | {"edit"}),
    "emotion": (("[[emotion: cold]]", "[[emotion: angry]]"), TEXT | per_shot(A) | {"edit"}),
    "action": (("顾辰俯身，", "顾辰转身，"), TEXT | per_shot(A, stages=("storyboard", "video")) | {"edit"}),
    "framing": (("[[shot: wide, pan-right, 3s]]", "[[shot: medium, pan-right, 3s]]"),
                TEXT | per_shot(C, stages=("storyboard", "video")) | {"edit"}),
    # the panel's header prints the camera move and a fixed duration; a duration is the dub's slot too
    "camera": (("[[shot: wide, pan-right, 3s]]", "[[shot: wide, push-in, 3s]]"),
               TEXT | per_shot(C, stages=("storyboard", "video")) | {"edit"}),
    "duration": (("[[shot: wide, pan-right, 3s]]", "[[shot: wide, pan-right, 4s]]"), TEXT | per_shot(C) | {"edit"}),
    "location": (("外景. 古城墙 - 夜", "外景. 古城楼 - 夜"),
                 TEXT | per_shot(C, stages=("storyboard", "video")) | {"edit"}),
    "time of day": (("外景. 古城墙 - 夜", "外景. 古城墙 - 日"),
                    TEXT | per_shot(C, stages=("storyboard", "video")) | {"edit"}),
    # who a character is: drawn (and prompted) wherever they appear; their voice: their lines, and the
    # panel's figure (voice=f/m picks the figure)
    "description": (("desc=倔强的实习生", "desc=沉默的实习生"),
                    TEXT | per_shot(B, stages=("storyboard", "video")) | {"edit"}),
    "character name": (("en=Lin Xiao", "en=Lin Xiaoxiao"),
                       TEXT | per_shot(B, stages=("storyboard", "video")) | {"edit"}),
    "voice": (("林晓 | en=Lin Xiao | voice=f", "林晓 | en=Lin Xiao | voice=m"), TEXT | per_shot(B) | {"edit"}),
    # the panel colours a character by their place in the cast: a new one at the end moves no one
    "new character": (("    顾辰 | en=Gu Chen | voice=m | desc=冷漠的总裁\n",
                       "    顾辰 | en=Gu Chen | voice=m | desc=冷漠的总裁\n    苏曼 | en=Su Man | voice=f\n"), TEXT),
    "title page": (("Title: 钥匙测试", "Title: 钥匙"), TEXT),
    # a one-word parenthetical is the line's emotion (the voice's delivery); a direction is not voiced
    "parenthetical emotion": (("(颤抖)", "(低声)"), TEXT | per_shot(B) | {"edit"}),
    "parenthetical direction": (("(看着 她)", "(盯着 她)"), TEXT),
    "comment": (("/* a writer's note */", "/* another note */"), {"script"}),
}


@pytest.mark.parametrize("field", list(SCREENPLAY_CHANGES))
def test_screenplay_field_rerenders_exactly_what_it_changes(base, field: str) -> None:
    (old, new), expected = SCREENPLAY_CHANGES[field]
    assert SCREENPLAY.count(old) == 1
    changed = rerendered(base, field.replace(" ", "-"), screenplay=SCREENPLAY.replace(old, new))
    assert changed == expected, f"{field}: re-rendered {sorted(changed)}, expected {sorted(expected)}"


ALL = per_shot(*SHOTS)
VISUAL = per_shot(*SHOTS, stages=("storyboard", "video"))
VIDEO = shot("video", *SHOTS)

JOB_CHANGES = {
    "seed": (["seed=8"], VISUAL | {"edit"}),  # the screenplay file does not sample: the script stage keeps
    "languages": (["languages=[zh]"], {"translate"} | per_shot(*SHOTS, stages=("dub", "video")) | {"edit"}),
    "storyboard size": (["stages.storyboard.width=288", "stages.storyboard.height=512"], VISUAL | {"edit"}),
    "storyboard backend": (["stages.storyboard.backend=flux-tiny"], VISUAL | {"edit"}),
    "storyboard options": (["stages.storyboard.options={caption: bottom}"], VISUAL | {"edit"}),
    "video size": (["stages.video.width=288", "stages.video.height=512"], VIDEO | {"edit"}),
    "video options": (["stages.video.options={amount: 0.05}"], VIDEO | {"edit"}),
    "fps": (["stages.video.fps=12"], per_shot(*SHOTS, stages=("dub", "video")) | {"edit"}),  # frames snap
    "voice backend options": ([f"stages.{TTS}.options={{sample_rate: 24000}}"],
                              per_shot(*SHOTS, stages=("dub", "video")) | {"edit"}),
    "voice of one character": ([f"stages.{TTS}.voices={{林晓: {{espeak: cmn+f4}}}}"],
                               per_shot(B, stages=("dub", "video")) | {"edit"}),
    "dub pacing": (["stages.dub.gap_s=0.5"], per_shot(*SHOTS, stages=("dub", "video")) | {"edit"}),
    "dub languages": (["stages.dub.languages=[zh]"], per_shot(*SHOTS, stages=("dub", "video")) | {"edit"}),
    "translate glossary": (["stages.translate.glossary={en: {合同: contract}}"], {"translate"}),
    "edit encode": (["stages.edit.crf=23"], {"edit"}),
    "label text": (["stages.edit.label_text=AI生成内容"], {"edit"}),
    "label seconds": (["stages.edit.label_seconds=4"], {"edit"}),
    "title": (["title=钥匙 · 第2集"], {"edit"}),  # in the file's metadata and on the covers
    "company": (["company=另一家公司"], {"edit"}),
    "delivery": (["delivery=[douyin]"], {"edit"}),
    "budget": (["budget.max_cny=\"5.00\""], set()),  # nothing in the picture or the sound
    "placement": (["stages.script.resources.cpu_group=1", "stages.translate.resources.cpu_group=1",
                   "stages.edit.resources.cpu_group=1", "stages.edit.num_cpus=2", "stages.video.actors=2",
                   "stages.video.num_gpus=0.5", "stages.storyboard.resources.gpu_group=1"], set()),  # where, not what
}


@pytest.mark.parametrize("field", list(JOB_CHANGES))
def test_job_field_rerenders_exactly_what_it_changes(base, field: str) -> None:
    overrides, expected = JOB_CHANGES[field]
    changed = rerendered(base, field.replace(" ", "-"), overrides=overrides)
    assert changed == expected, f"{field}: re-rendered {sorted(changed)}, expected {sorted(expected)}"


def test_a_model_prompted_without_dialogue_keeps_its_keyframes_when_a_line_changes(base) -> None:
    """flux-tiny is prompted from framing, people, action and place: a line edit re-voices, never re-paints."""
    root, _ = base
    before = keys(root, "tiny-before", profile="tiny")
    after = keys(root, "tiny-after", profile="tiny", screenplay=SCREENPLAY.replace("为什么是我？", "凭什么是我？"))
    changed = {label for label in before if label != "ProduceID" and after[label] != before[label]}
    assert changed == TEXT | per_shot(B, stages=("dub", "video")) | {"edit"}


def test_produce_id_is_a_digest_of_the_content(base) -> None:
    """ProduceID (GB 45438-2025 implicit label) changes with the content and only with it."""
    root, before = base
    again = keys(root, "again")
    assert again["ProduceID"] == before["ProduceID"]  # the same episode, built afresh elsewhere
    assert keys(root, "pid-budget", overrides=["budget.max_cny=\"5.00\""])["ProduceID"] == before["ProduceID"]
    line = keys(root, "pid-line", screenplay=SCREENPLAY.replace("签了它。", "签字。"))
    title = keys(root, "pid-title", overrides=["title=别的标题"])
    assert len({before["ProduceID"], line["ProduceID"], title["ProduceID"]}) == 3
    assert before["ProduceID"].startswith("keys/ep01/") and len(before["ProduceID"].rsplit("/", 1)[1]) == 32
