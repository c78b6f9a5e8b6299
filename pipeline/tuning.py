"""Stage tuning from a notebook: run one stage on one shot in-process, cached and metered, and show it inline.

```python
from pipeline.tuning import Tuner, side_by_side

t = Tuner("configs/episodes/demo/job.yaml", profile="tiny")
a = t.storyboard("s01-sh01", steps=2)
b = t.storyboard("s01-sh01", steps=4, character_seeds={"顾辰": 7})
side_by_side([a, b])                        # one PNG, labelled with what differs
t.choose(b)                                 # keep b's settings for every later call
print(t.overrides_yaml())                   # paste into the job's YAML
```

Every call is exactly one stage execution through `pipeline.orchestrate.execute` (no Ray; no ledger sink):
it is cached by content in the tuner's work folder (running the same settings again is a cache hit that
costs nothing) and metered (the result's `usage` is the stage's usage record: wall_s, cpu_s, ai_usage).
`video` first gets its storyboard and dub through the same cache, as an episode run would.

Keyword settings map onto the job's dotted overrides, so what is settled on pastes into the job:

| stage | keyword | dotted override |
|---|---|---|
| any | `seed`, `profile` | `seed`, `profile` (job level) |
| any | `"stages.video.fps"` … (any key with a dot, via `**{...}`) | as written |
| storyboard | `backend`, `width`, `height` | `stages.storyboard.<key>` |
| storyboard | anything else (`steps`, `guidance`, `style`, `character_seeds`…) | `stages.storyboard.options.<key>` |
| video | `backend`, `width`, `height`, `fps` | `stages.video.<key>` |
| video | anything else (`steps`, `guidance`, `shift`, `max_frames`…) | `stages.video.options.<key>` |
| dub | `backend`, `voices`, `lead_in_s`, `gap_s`, `tail_s`, `min_shot_s`, `max_stretch`, `languages` | `stages.dub.<key>` |
| dub | anything else (`sample_rate`, `speaking_rate`…) | `stages.dub.options.<key>` |

Mappings are flattened into leaves (`voices={"林晓": {"espeak": "cmn+f4"}}` is
`stages.dub.voices.林晓.espeak=cmn+f4`), so they merge with the job's own settings as overrides do.
Note: with the diffusers storyboards a shot led by a character starts from that character's noise
(`character_seeds`), not from the job `seed`; the job seed matters for shots without people.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

from models import options
from models.registry import resolve
from pipeline.cache import digest
from pipeline.job import Job, load_job
from pipeline.job_backends import screenplay_text
from pipeline.orchestrate import STAGES, RunInfo, backend_settings, execute
from pipeline.script import Script, Shot
from pipeline.stages import StageCall
from pipeline.stages.script import load_script
from pipeline.tuning_results import DubResult, Result, StoryboardResult, VideoResult, side_by_side

__all__ = ["Tuner", "Result", "StoryboardResult", "DubResult", "VideoResult", "side_by_side", "dotted", "as_cli",
           "parse_cli", "nest"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JOB = ROOT / "configs" / "episodes" / "demo" / "job.yaml"
JOB_KEYS = ("seed", "profile")
SECTION_KEYS = {  # stage → (keyword → settings section) for keywords that are not backend options
    "storyboard": {"backend": "stages.storyboard", "width": "stages.storyboard", "height": "stages.storyboard"},
    "video": {k: "stages.video" for k in ("backend", "width", "height", "fps")},
    "dub": {k: "stages.dub" for k in ("backend", "voices", "lead_in_s", "gap_s", "tail_s", "min_shot_s",
                                      "max_stretch", "languages")},
}
OPTIONS = {"storyboard": "stages.storyboard.options", "video": "stages.video.options", "dub": "stages.dub.options"}


# ---------------------------------------------------------------- overrides

def dotted(stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings of one stage → {dotted key: value}, mappings flattened into their leaves."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if "." in key or key in JOB_KEYS:
            path = key
        elif key in SECTION_KEYS[stage]:
            path = f"{SECTION_KEYS[stage][key]}.{key}"
        else:
            path = f"{OPTIONS[stage]}.{key}"
        out.update(_flatten(path, value))
    return out


def _flatten(path: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value and all(isinstance(k, str) and "." not in k for k in value):
        return {leaf: v for k, sub in value.items() for leaf, v in _flatten(f"{path}.{k}", sub).items()}
    return {path: value}


def as_cli(overrides: dict[str, Any]) -> list[str]:
    """{dotted key: value} → `KEY=VALUE` strings as `microdrama run` and `load_job` take them (JSON is YAML;
    a string YAML reads back as itself is written bare: `profile=tiny`, not `profile="tiny"`)."""
    return [f"{k}={_cli_value(v)}" for k, v in overrides.items()]


def _cli_value(value: Any) -> str:
    if isinstance(value, str) and value and value.strip() == value and not set(value) & set(",[]{}#:'\"&*!|>%@`"):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)


def parse_cli(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings → {dotted key: value}, the value read as YAML (as `load_job` reads it)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. stages.video.fps=24")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"stages.video.fps": 8} → {"stages": {"video": {"fps": 8}}}."""
    root: dict[str, Any] = {}
    for key, value in overrides.items():
        node = root
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return root


def _free_memory() -> None:
    """Collect a dropped model now and hand its CUDA memory back (no-op without torch or CUDA)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the tuner

class Tuner:
    """One episode job, tuned one stage and one shot at a time.

    `job_path` defaults to $MICRODRAMA_JOB, else the demo job; `profile` replaces the job's profile (None
    keeps it); `overrides` are `KEY=VALUE` strings as on the command line and count as chosen settings;
    `session` are `KEY=VALUE` strings for this tuning session only (a lower fps for a quick CPU preview),
    never reported as chosen; `workdir` (default $MICRODRAMA_WORKDIR, else a new temporary folder) holds
    the cache and outputs.
    """

    def __init__(self, job_path: str | Path | None = None, profile: str | None = "tiny",
                 overrides: Sequence[str] = (), workdir: str | Path | None = None,
                 session: Sequence[str] = ()) -> None:
        self.job_path = Path(job_path or os.environ.get("MICRODRAMA_JOB") or DEFAULT_JOB).resolve()
        self.workdir = Path(workdir or os.environ.get("MICRODRAMA_WORKDIR")
                            or tempfile.mkdtemp(prefix="microdrama-tune-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile = profile  # where the tuning runs (e.g. tiny on a laptop): not part of what is chosen
        self.session = parse_cli(session)
        self.chosen: dict[str, Any] = parse_cli(overrides)
        self.records: list[dict[str, Any]] = []  # every usage record this tuner produced, in order
        self._jobs: dict[str, Job] = {}
        self._scripts: dict[str, Script] = {}
        self._backends: dict[str, tuple[str, Any]] = {}  # stage → (backend+options digest, instance)
        self.job = self.job_for({})  # fail now, with every problem listed, on a bad job or override
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.run_id = f"tune.{self.job.drama}.{self.job.episode}.{stamp}.{os.urandom(3).hex()}"

    # -- jobs, script, shots

    def job_for(self, overrides: dict[str, Any]) -> Job:
        """The job with the chosen settings, then `overrides` ({dotted key: value}), applied."""
        places = {"cache_dir": str(self.workdir / "cache"), "output_dir": str(self.workdir / "out")}
        profile = {"profile": self.profile} if self.profile else {}
        items = as_cli({**profile, **self.session, **self.chosen, **overrides, **places})
        key = digest(items)
        if key not in self._jobs:
            self._jobs[key] = load_job(self.job_path, items)
        return self._jobs[key]

    @property
    def script(self) -> Script:
        """The screenplay as the stages see it (parsed, then translated), under the chosen settings."""
        return self.script_for(self.job)

    @property
    def shots(self) -> list[Shot]:
        return self.script.shots

    def shot(self, shot_id: str | Shot) -> Shot:
        """A shot by id (a Shot is returned as is: edit one with `shot.model_copy(update={...})`)."""
        return self._shot_in(self.job, shot_id)

    def voice_hints(self, character: str) -> dict[str, str]:
        """The voice hints a character is dubbed with: the screenplay's cast entry, then stages.dub.voices."""
        from pipeline.stages.dub import _voice

        return _voice(self.script, self.job, character)

    def shots_table(self) -> Any:
        """A pandas table of the shots: framing, camera, people, lines and fixed duration."""
        import pandas as pd

        return pd.DataFrame([{"id": s.id, "framing": s.framing, "camera": s.camera,
                              "characters": ", ".join(s.characters), "lines": len(s.lines),
                              "duration_s": s.duration_s, "action": s.action[:40]} for s in self.shots])

    def script_for(self, job: Job) -> Script:
        """Run the script and translate stages once per script-relevant settings (cached and metered)."""
        text = screenplay_text(job)  # an edited screenplay is re-parsed; read through the bounded reader
        key = digest(job.stages.script, job.stages.translate, job.languages, job.seed, text)
        if key not in self._scripts:
            parsed = self._execute(job, "script", StageCall(None))
            translated = self._execute(job, "translate", StageCall(None, {"script": parsed["outputs"]}))
            self._scripts[key] = load_script(translated["outputs"])
        return self._scripts[key]

    # -- one stage on one shot

    def storyboard(self, shot_id: str | Shot, **settings: Any) -> StoryboardResult:
        """The shot's keyframe under the chosen settings plus `settings` (see the module's table)."""
        overrides = dotted("storyboard", settings)
        job = self.job_for(overrides)
        shot = self._shot_in(job, shot_id)
        res = self._execute(job, "storyboard", StageCall(shot.id, {"shot": shot, "script": self.script_for(job)}))
        return StoryboardResult("storyboard", shot, overrides, res["outputs"], res["record"], res["key"], job)

    def dub(self, shot_id: str | Shot, **settings: Any) -> DubResult:
        """The shot's lines voiced in every dub language and laid out (sets the shot's length)."""
        overrides = dotted("dub", settings)
        job = self.job_for(overrides)
        shot = self._shot_in(job, shot_id)
        script = self.script_for(job)
        res = self._execute(job, "dub", StageCall(shot.id, {"shot": shot, "script": script}))
        return DubResult("dub", shot, overrides, res["outputs"], res["record"], res["key"], job, script)

    def video(self, shot_id: str | Shot, **settings: Any) -> VideoResult:
        """The shot's clip: its storyboard and dub come through the cache first, then one video execution."""
        overrides = dotted("video", settings)
        job = self.job_for(overrides)
        shot = self._shot_in(job, shot_id)
        base = {"shot": shot, "script": self.script_for(job)}
        sb = self._execute(job, "storyboard", StageCall(shot.id, base))
        dub = self._execute(job, "dub", StageCall(shot.id, base))
        res = self._execute(job, "video", StageCall(shot.id, {"shot": shot, "storyboard": sb["outputs"],
                                                               "dub": dub["outputs"]}))
        upstream = {"storyboard": StoryboardResult("storyboard", shot, {}, sb["outputs"], sb["record"], sb["key"],
                                                   job),
                    "dub": DubResult("dub", shot, {}, dub["outputs"], dub["record"], dub["key"], job,
                                     base["script"])}
        return VideoResult("video", shot, overrides, res["outputs"], res["record"], res["key"], job, upstream)

    def _shot_in(self, job: Job, shot_id: str | Shot) -> Shot:
        if isinstance(shot_id, Shot):
            return shot_id
        for shot in self.script_for(job).shots:
            if shot.id == shot_id:
                return shot
        raise KeyError(f"no shot {shot_id!r}; shots: {', '.join(s.id for s in self.script_for(job).shots)}")

    def _execute(self, job: Job, stage: str, call: StageCall) -> dict[str, Any]:
        info = RunInfo(run_id=self.run_id, job=job, cache_root=str(self.workdir / "cache"))
        result = execute(info, stage, call, backend=self._backend(job, stage))
        self.records.append(result["record"])
        return result

    def _backend(self, job: Job, stage: str) -> Any:
        """One backend instance per stage, replaced when its backend or options change. Construction is
        cheap (models load on first use); dropping the old instance first frees its model, so trying many
        settings of a large model never holds more than one copy of it in (GPU) memory."""
        settings = backend_settings(job, stage)
        if settings is None:
            return None
        key = digest(stage, settings.backend, settings.options)
        held = self._backends.get(stage)
        if held is None or held[0] != key:
            if self._backends.pop(stage, None) is not None:
                _free_memory()
            cls = resolve(STAGES[stage][1], settings.backend)
            self._backends[stage] = held = (key, options.construct(cls, settings.options))
        return held[1]

    # -- what was settled on

    def choose(self, result: Result | str, **settings: Any) -> dict[str, Any]:
        """Keep a result's overrides (or a stage's `settings`) for every later call and for
        `overrides_yaml`; returns the chosen overrides so far."""
        new = result.overrides if isinstance(result, Result) else dotted(result, settings)
        self.job_for(new)  # refuse a bad setting now
        for key in new:  # a new choice replaces the old one at, above or below its key
            for old in [k for k in self.chosen if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")]:
                del self.chosen[old]
        self.chosen.update(new)
        self.job = self.job_for({})
        return dict(self.chosen)

    def overrides_cli(self) -> list[str]:
        """The chosen settings as `KEY=VALUE` arguments for `microdrama run JOB.yaml …`, led by the profile
        they were tuned on: backend options (`steps`, `character_seeds`) belong to that profile's backends,
        and the job's own profile may run others that do not take them."""
        return as_cli({"profile": self.job.profile, **self.chosen})

    def command_args(self) -> list[str]:
        """The arguments after `microdrama run` (or `microdrama validate`): the job file, then the overrides."""
        return [str(self.job_path), *self.overrides_cli()]

    def command(self) -> str:
        """The shell command that runs the episode with the chosen settings, exactly as tuned (quoted)."""
        import shlex

        return shlex.join(["microdrama", "run", *self.command_args()])

    def overrides_yaml(self) -> str:
        """The chosen settings as a YAML snippet to paste at the top level of the job file (with the
        profile they were tuned on when it is not the job file's own)."""
        if not self.chosen:
            return "# nothing chosen yet: the job's own settings\n"
        head = (f"# tuned with pipeline.tuning on {self.job_path.name} (profile {self.job.profile}); "
                "paste at the top level of the job's YAML\n")
        own = load_job(self.job_path, [f"cache_dir={self.workdir / 'cache'}",
                                       f"output_dir={self.workdir / 'out'}"]).profile
        chosen = self.chosen if own == self.job.profile else {"profile": self.job.profile, **self.chosen}
        return head + yaml.safe_dump(nest(chosen), allow_unicode=True, sort_keys=False,
                                     default_flow_style=False)

    def usage_table(self) -> Any:
        """A pandas table of every usage record this tuner produced (cache hits included)."""
        import pandas as pd

        return pd.DataFrame([{"stage": r["stage"], "shot": r["shot"], "backend": r["backend"],
                              "cache_hit": r["cache_hit"], "wall_s": round(r["wall_s"], 3),
                              "cpu_s": round(r["cpu_s"], 3),
                              "ai_usage": "; ".join(f"{u['tool']} {u['quantity']:g} {u['unit']}"
                                                    for u in r["ai_usage"])} for r in self.records])
