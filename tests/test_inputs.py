"""Bad input refused: any job file or screenplay gives a valid job/script or a JobError/ScreenplayError (exit
2 from the CLI, never a traceback); paths cannot escape; oversized inputs are refused in bounded memory."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline.errors import JobError
from pipeline.job import load_job
from pipeline.screenplay import ScreenplayError, parse
from tests.tiny_jobs import cli

ROOT = Path(__file__).resolve().parents[1]
SCREENPLAY = "Title: t\nLanguage: zh\n\nINT. ROOM - DAY\n\nANNA\n你好。\n"
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)

# ---------------------------------------------------------------- job files

FIELDS = ["drama", "episode", "title", "company", "languages", "profile", "screenplay", "output_dir", "cache_dir",
          "seed", "budget", "stages", "job_dir", "colour"]
SECTIONS = ["script", "storyboard", "video", "tts", "translate", "dub", "edit", "sound"]
SETTINGS = ["backend", "options", "actors", "num_gpus", "num_cpus", "max_retries", "width", "height", "fps",
            "languages", "lead_in_s", "crf", "label_seconds", "voices", "glossary", "max_cny", "api_key"]
TRICKY = ["preview-cpu", "tiny", "p.yaml", "../p.yaml", "/etc/passwd", "ep.fountain", "../ep.fountain", "zh", "en",
          "NaN", "-1", "1e999", "Infinity", "20.00", "procedural", "camera-move", "\x00", "~", "..", "a" * 300]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=20),
                    st.sampled_from(TRICKY))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(SETTINGS + SECTIONS), st.text(max_size=8)), inner, max_size=4)),
    max_leaves=12)
jobs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=10)
overrides = st.lists(st.builds("{}={}".format, st.sampled_from(
    ["stages.video.fps", "languages", "stages", "budget.max_cny", "profile", "title", "stages.video", "a..b", "",
     "seed", "output_dir", "stages.tts.options.token"]), st.one_of(st.text(max_size=12), st.sampled_from(TRICKY))),
    max_size=3)
BASE = {"drama": "d", "episode": "e1", "screenplay": "ep.fountain"}


@pytest.fixture(scope="module")
def job_dir() -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "job"
        folder.mkdir()
        (folder / "ep.fountain").write_text(SCREENPLAY, encoding="utf-8")
        (folder / "p.yaml").write_text("name: p\nstages: {video: {fps: 12}}\n", encoding="utf-8")
        yield folder


def _load(folder: Path, text: str, extra: list[str]) -> None:
    path = folder / "job.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_job(path, extra + [f"cache_dir={folder.parent / 'cache'}"])
    except JobError:
        pass  # refused with a message: fine; anything else fails the test


@fuzz(400)
@given(job=jobs, based=st.booleans(), extra=overrides)
def test_any_job_dict_loads_or_is_refused(job_dir, job, based, extra) -> None:
    _load(job_dir, yaml.safe_dump({**BASE, **job} if based else job, allow_unicode=True), extra)


@fuzz(300)
@given(text=st.one_of(st.text(max_size=300), st.sampled_from([
    "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",  # a billion laughs, in small
    "[" * 5000, "drama: d\n2020-01-01: x\n", "? [a, b]\n: c\n", "!!python/object:os.system {}\n", "\ufeffdrama: d\n",
    "drama: d\nepisode: e1\nscreenplay: ep.fountain\nstages: {video: {options: {api_key: sk-123456789}}}\n"])))
def test_any_yaml_text_loads_or_is_refused(job_dir, text) -> None:
    _load(job_dir, text, [])


@fuzz(12)
@given(job=jobs)
def test_cli_renders_bad_jobs_with_exit_2(job_dir, job) -> None:
    path = job_dir / "job.yaml"
    path.write_text(yaml.safe_dump({**BASE, **job}, allow_unicode=True), encoding="utf-8")
    res = cli("validate", str(path), f"cache_dir={job_dir.parent / 'cache'}")
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output
    assert res.exit_code == 0 or res.output.startswith("error: "), res.output


# ---------------------------------------------------------------- screenplays

LINES = st.sampled_from([
    "", "INT. ROOM - DAY", "内景. 办公室 - 夜 #huairou", "EXT. CITY - NIGHT #a #b", "ANNA", "@bob", "林晓", "(beat)",
    "（颤抖）", "Hello there.", "你好。", "[[shot: wide, push-in, 2s]]", "[[shot: close]]", "[[shot: ]]",
    "[[en: Hi]]", "[[zh: 你好]]", "[[emotion: angry]]", "[[tags: a, b]]", "[[char: X | en=Y]]", "Title: t",
    "Language: zh", "Languages: zh, en", "Characters:", "    林晓 | en=Lin | voice=f", "> CUT TO:", "CUT TO:",
    "/* note", "*/", "# Act", "= synopsis", "===", "!ACTION", "~lyric", "[[", "]]", "[[shot: wide, 999s]]",
    "[[shot: wide, 0s]]", ".FORCED HEADING", "*bold* _u_", "\t", "ANNA (V.O.)", "ANNA ^", "\ufeff", "\x00"])


@fuzz(1500)
@given(lines=st.lists(st.one_of(LINES, st.text(max_size=30)), max_size=40),
       language=st.sampled_from([None, "zh", "en", "xx", "ZH"]))
def test_any_screenplay_parses_or_is_refused(lines, language) -> None:
    try:
        script = parse("\n".join(lines), language=language)
    except ScreenplayError as err:
        assert err.line >= 0 and str(err)
    else:
        assert script.shots and all(s.id for s in script.shots)


@fuzz(8)
@given(lines=st.lists(st.one_of(LINES, st.text(max_size=20)), min_size=1, max_size=20))
def test_cli_renders_bad_screenplays_with_exit_2(job_dir, lines) -> None:
    (job_dir / "fuzz.fountain").write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    (job_dir / "job.yaml").write_text(yaml.safe_dump({**BASE, "screenplay": "fuzz.fountain"}), encoding="utf-8")
    res = cli("validate", str(job_dir / "job.yaml"), f"cache_dir={job_dir.parent / 'cache'}")
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output


# ---------------------------------------------------------------- paths that try to escape

def test_paths_cannot_escape(tmp_path) -> None:
    from pipeline.runner import publish

    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "ep.fountain").write_text(SCREENPLAY, encoding="utf-8")
    (tmp_path / "secret.fountain").write_text(SCREENPLAY, encoding="utf-8")
    (folder / "link.fountain").symlink_to(tmp_path / "secret.fountain")
    (tmp_path / "evil.yaml").write_text("name: evil\n", encoding="utf-8")
    job = folder / "job.yaml"
    cases = {"screenplay: ../secret.fountain": "outside the job's folder",
             "screenplay: link.fountain": "outside the job's folder",
             f"screenplay: {tmp_path / 'secret.fountain'}": "outside the job's folder",
             "screenplay: ep.fountain\nprofile: ../evil.yaml": "outside the job's folder",
             "screenplay: ep.fountain\nprofile: ../../etc": "neither a profile name",
             "screenplay: ep.fountain\ndrama: ../x": "must be a slug",
             "screenplay: ep.fountain\ndrama: d": "duplicate key 'drama'"}  # no longer "the last one wins"
    for body, needle in cases.items():
        head = "episode: e1\n" if "drama: ../x" in body else "drama: d\nepisode: e1\n"
        job.write_text(head + body + "\n", encoding="utf-8")
        with pytest.raises(JobError, match=needle):
            load_job(job, [f"cache_dir={tmp_path / 'cache'}"])
    out = tmp_path / "out"
    (out).mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "d").symlink_to(tmp_path / "elsewhere")  # out/<drama> planted as a link to another folder
    job.write_text("drama: d\nepisode: e1\nscreenplay: ep.fountain\n", encoding="utf-8")
    with pytest.raises(JobError, match="outside .* \\(a symlink\\)"):
        load_job(job, [f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}"])
    res = cli("run", str(job), f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}")
    assert res.exit_code == 2 and "symlink" in res.output
    ok = load_job(job, [f"output_dir={tmp_path / 'out2'}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(Exception, match="outside"):  # checked again at publish time (the link may appear later)
        publish(ok.model_copy(update={"output_dir": out}), {"episode": "x", "subtitles": {}}, {})
    assert list((tmp_path / "elsewhere").iterdir()) == []


# ---------------------------------------------------------------- oversized inputs, bounded memory

PEAK = """
import atexit, runpy, sys
def peak():  # VmHWM: this process's own high-water RSS since exec (ru_maxrss would include the forked parent)
    hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    print(f"PEAK_RSS_KIB {hwm}", file=sys.stderr)
atexit.register(peak)
sys.argv = ["microdrama", *sys.argv[1:]]
runpy.run_module("pipeline.cli", run_name="__main__")
"""


def _validate_rss(job: Path) -> tuple[int, str, int]:
    """`microdrama validate JOB` in a child process: (exit code, its output, its own peak RSS in MiB)."""
    proc = subprocess.run([sys.executable, "-c", PEAK, "validate", str(job), f"cache_dir={job.parent / 'cache'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    kib = int(text.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0])
    return proc.returncode, text, kib // 1024


def _job(folder: Path, screenplay: str | bytes, job_text: str | None = None) -> Path:
    folder.mkdir(parents=True)
    data = screenplay if isinstance(screenplay, bytes) else screenplay.encode()
    (folder / "ep.fountain").write_bytes(data)
    (folder / "job.yaml").write_text(job_text or "drama: d\nepisode: e1\nscreenplay: ep.fountain\n")
    return folder / "job.yaml"


def test_oversized_inputs_are_refused_in_bounded_memory(tmp_path) -> None:
    """Each case in a fresh child process whose peak RSS must stay within a fixed budget over that of
    validating a tiny valid job: none of these inputs is ever held in memory whole."""
    small = _job(tmp_path / "small", SCREENPLAY)
    huge = _job(tmp_path / "huge", SCREENPLAY + ("她" * 3_500_000))  # 10.5 MB of text
    shots = _job(tmp_path / "shots", "Title: t\n\nINT. ROOM - DAY\n\n" + "".join(
        f"[[shot: wide, hold, 1s]]\n{i}.\n\n" for i in range(10_000)))
    yaml_big = _job(tmp_path / "yaml-big", SCREENPLAY, "drama: d\nepisode: e1\nscreenplay: ep.fountain\n"
                    "title: " + "x" * (10 << 20) + "\n")
    bomb = _job(tmp_path / "bomb", SCREENPLAY, "drama: d\nepisode: e1\nscreenplay: ep.fountain\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10 if i else ['x'] * 10)}]\n" for i in range(9)))
    giant = _job(tmp_path / "giant", b"")
    with open(giant.parent / "ep.fountain", "r+b") as fh:  # 512 MiB (sparse): reading it whole would show
        fh.truncate(512 << 20)
    results = {}
    for name, job in (("small", small), ("huge", huge), ("giant", giant), ("shots", shots), ("yaml-big", yaml_big),
                      ("bomb", bomb)):
        started = time.monotonic()
        code, text, rss = _validate_rss(job)
        results[name] = (code, text, rss, time.monotonic() - started)
    base = results["small"][2]
    assert results["small"][0] == 0, results["small"]
    expect = {"huge": "larger than the 1,048,576-byte limit", "giant": "larger than the 1,048,576-byte limit",
              "shots": "more than 2000 shots",
              "yaml-big": "bytes is more than a job file can be", "bomb": "once YAML aliases are expanded"}
    for name, needle in expect.items():
        code, text, rss, took = results[name]
        assert code == 2 and needle in text and "Traceback" not in text, (name, text)
        assert rss - base < 8, (name, rss, base)  # MiB over a tiny valid job: the input was never loaded whole
        assert took < 60, (name, took)
    print({k: (v[2], round(v[3], 1)) for k, v in results.items()})


def test_a_custom_resource_no_node_has_is_refused_before_any_work(tmp_path, ray_session) -> None:
    """Ray would keep such a stage pending for ever; the run refuses it up front, naming the field."""
    from tests.tiny_jobs import ledger_entries, places, write_job

    path = write_job(tmp_path / "job", stages={"video": {"resources": {"gpu-farm": 1}}})
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    res = cli("run", str(path), *places(tmp_path), "--quiet", "--ledger", ledger,
              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert res.exit_code == 2 and "stages.video.resources.gpu-farm: no node of this Ray cluster (live or in an autoscaling group)" in res.output, res.output
    assert not (tmp_path / "out").exists() and not ledger_entries(ledger, "usage")
    bad = write_job(tmp_path / "bad", stages={"video": {"resources": {"GPU": 1}}})
    res = cli("validate", str(bad), *places(tmp_path))
    assert res.exit_code == 2 and "stages.video.resources" in res.output and "num_gpus" in res.output
