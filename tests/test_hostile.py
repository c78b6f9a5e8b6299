"""Hostile input: every command refuses bad files, numbers, addresses and paths with one clear line — exit 2
for bad input, exit 4 for a service that does not answer — never a traceback, never a hang, never unbounded
memory. Deterministic cases for each class of failure, then hypothesis over job files, dotted overrides,
claim scenarios and the CLI's arguments (all in-process, through the same typer app)."""
from __future__ import annotations

import os
import re
import resource
import signal
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline import safe_io
from pipeline.errors import JobError
from pipeline.job import load_job
from tests.tiny_jobs import write_job

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
HANG_S = 60  # an invocation still running after this long is a hang (a closed port answers in ~0 s)
SCREENPLAY = "Title: t\nLanguage: zh\n\nINT. ROOM - DAY\n\nANNA\n你好。\n"
SCENARIO = """\
year: 2026
company: {name: 示例影业有限公司, districts: [huairou, yizhuang], headcount: 4}
dramas:
  - id: ep-series-01
    launched: 2026-03-01
    produced_in: [huairou]
    costs: {compute: "41234.56", ai_tools: "12000", production: "300000"}
"""


@contextmanager
def deadline(seconds: int = HANG_S):
    """Fail (instead of hanging the suite) if the block runs longer than `seconds`."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def peak_rss_kib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])


class WorkDir(type(Path())):
    """The module's folder, remembering this process's peak RSS when the module started."""

    peak_at_start_kib = 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder for the module with its own ledger, MLflow store and cwd (report writes into the cwd)."""
    root = WorkDir(tmp_path_factory.mktemp("hostile"))
    root.peak_at_start_kib = peak_rss_kib()
    (root / "ep.fountain").write_text(SCREENPLAY, encoding="utf-8")
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    os.chdir(root)
    os.environ["MICRODRAMA_LEDGER"] = f"sqlite:///{root / 'ledger.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MICRODRAMA_MLFLOW_QUEUE"] = str(root / "queue")
    try:
        yield root
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)


def invoke(*args: str):
    """`microdrama ARGS` in this process; asserts no traceback and no hang, returns the click Result."""
    from typer.testing import CliRunner

    from pipeline import cli as cli_mod

    if not getattr(cli_mod, "_mounted_for_tests", False):
        cli_mod._mount()
        cli_mod._mounted_for_tests = True
    with deadline():
        res = CliRunner().invoke(cli_mod.app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception), res.output)
    assert "Traceback" not in res.output, (args, res.output)
    return res


def one_line_error(res, code: int, needle: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.output)
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", res.output).split())  # typer's usage-error box wraps lines
    assert needle in text, res.output


def closed_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_file(folder: Path, text: str) -> Path:
    path = folder / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = "drama: d\nepisode: e1\nscreenplay: ep.fountain\n"


# ---------------------------------------------------------------- the one bounded reader


def test_reader_refuses_what_is_not_a_small_regular_utf8_file(tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "latin1").write_bytes("é: 1\n".encode("latin-1"))
    (tmp_path / "big").write_bytes(b"a: 1\n" + b"#" * 2000)
    cases = {"fifo": "not a regular file", "loop": "symlink loop", "zero": "not a regular file",
             "latin1": "line 1: not UTF-8", "big": "larger than the 1,000-byte limit", "none": "file not found",
             ".": "is a folder"}
    started = time.monotonic()
    for name, needle in cases.items():
        with pytest.raises(safe_io.InputError, match=needle):
            safe_io.load_yaml(tmp_path / name, "scenario", max_bytes=1000)
    assert time.monotonic() - started < HANG_S  # a FIFO opened blocking would never return


@pytest.mark.parametrize("text, needle", [
    ("a: 1\nb: 2\na: 3\n", "duplicate key 'a'"),
    ("[" * 10_000 + "]" * 10_000, "nested more than 32 levels"),
    ("x: " + "9" * 5000 + "\n", "more than 30 digits"),
    ("x: 1.5e+999999\n", "out of range"),  # YAML 1.1 floats need the exponent sign
])
def test_yaml_that_pyyaml_would_build_wrong_or_die_on_is_refused(text, needle) -> None:
    with pytest.raises(safe_io.InputError, match=needle):
        safe_io.parse_yaml(text, "t.yaml", exact=True)


def test_dates_stay_text_and_merge_keys_still_work() -> None:
    data = safe_io.parse_yaml("d: 2026-02-30\nbase: &b {x: 1}\nm: {<<: *b, x: 2}\n", "t.yaml")
    assert data == {"d": "2026-02-30", "base": {"x": 1}, "m": {"x": 2}}


def test_cache_keys_and_the_tuner_read_the_screenplay_through_the_bounded_reader(tmp_path) -> None:
    from pipeline.stages import StageCall
    from pipeline.stages.script import ScriptStage
    from pipeline.tuning import Tuner

    job_path = write_job(tmp_path / "ep")
    job = load_job(job_path)
    tuner = Tuner(job_path, profile=None, workdir=tmp_path / "tune")
    screenplay = tmp_path / "ep" / "episode.fountain"
    good = ScriptStage(job).cache_key_parts(StageCall(None))
    assert screenplay.read_text(encoding="utf-8") in good
    screenplay.write_bytes(b"Title: t\n" + b"x" * (1 << 20))  # edited past the screenplay's size limit
    for read in (lambda: ScriptStage(job).cache_key_parts(StageCall(None)), lambda: tuner.script_for(tuner.job)):
        with pytest.raises(safe_io.InputError, match="screenplay.*1,048,576-byte limit"):
            read()
    screenplay.write_bytes("Title: t\n标题".encode("gb18030"))
    with pytest.raises(safe_io.InputError, match="not UTF-8"):
        ScriptStage(job).cache_key_parts(StageCall(None))
    screenplay.unlink()
    os.mkfifo(screenplay)  # a FIFO would block a plain read_text forever
    with deadline(20), pytest.raises(safe_io.InputError, match="not a regular file"):
        ScriptStage(job).cache_key_parts(StageCall(None))


# ---------------------------------------------------------------- job files and overrides


@pytest.mark.parametrize("body, needle", [
    (BASE + "seed: 2026-13-45\n", "seed:"),
    (BASE + "title: 2026-02-30\n", None),  # text, not a date PyYAML fails to build
    (BASE + "seed: " + "1" * 5000 + "\n", "more than 30 digits"),
    (BASE + "drama: x\n", "duplicate key 'drama'"),
    ('drama: "tiny-run\\n"\nepisode: e1\nscreenplay: ep.fountain\n', "drama: 'tiny-run\\n' must be a slug"),
    (BASE.replace("e1", '"e1\\n"'), "episode:"),
    (BASE + 'languages: ["zh\\n"]\n', "not language codes"),
    (BASE + 'title: "a\\0b"\n', "title: must not contain control characters"),
    (BASE + 'company: "x\\ny"\n', "company: must not contain control characters"),
    (BASE + "stages: {edit: {preset: bogus-preset}}\n", "stages.edit.preset: not an x264 preset"),
    (BASE + "stages: {edit: {audio_bitrate: loud}}\n", "stages.edit.audio_bitrate"),
    (BASE + "stages: {edit: {audio_bitrate: 9000k}}\n", "stages.edit.audio_bitrate"),
    (BASE + "stages: {edit: {label_text: ''}}\n", "stages.edit.label_text"),
    (BASE + "stages: {edit: {label_text: '   '}}\n", "stages.edit.label_text: must not be blank"),
    (BASE + "stages: {edit: {label_text: \"\\u200b\"}}\n", "stages.edit.label_text: must not contain invisible"),
    (BASE + "stages: {edit: {label_text: \"AI\\u2066生成\"}}\n", "stages.edit.label_text: must not contain invisible"),
    (BASE + "stages: {edit: {label_text: '%{pts}'}}\n", "stages.edit.label_text: must not contain %"),
    (BASE + "stages: {edit: {label_text: 'Hello'}}\n", "stages.edit.label_text: must say the episode is AI-generated"),
    (BASE + "stages: {edit: {label_text: 'Detail'}}\n", "stages.edit.label_text: must say the episode is AI-generated"),
    (BASE + "stages: {edit: {label_text: '人工智能生成'}}\n", None),
    (BASE + "stages: {edit: {label_text: 'AI-generated'}}\n", None),
    (BASE + "stages: {edit: {label_seconds: 0}}\n", "stages.edit.label_seconds"),
    (BASE + "stages: {edit: {label_text: null}}\n", "stages.edit.label_text"),
    (BASE + 'delivery: ["douyin\\n"]\n', "delivery[0]: 'douyin\\n' is neither a preset name"),
    (BASE + "stages: {video: {num_gpus: .inf}}\n", "stages.video.num_gpus"),
    (BASE + "languages: [zh, ko]\n", "languages: 1 of 1 line(s) have no 'ko' text"),
    (BASE + "languages: [en, zh]\n", "the screenplay is written in 'zh'"),
    (BASE + "budget: {max_cny: '1e999999999'}\n", "budget.max_cny"),
])
def test_job_values_run_could_not_render_are_refused_by_validate(work, body, needle) -> None:
    res = invoke("validate", str(job_file(work, body)), f"cache_dir={work / 'cache'}")
    if needle is None:
        assert res.exit_code == 0, res.output
    else:
        one_line_error(res, 2, needle)


@pytest.mark.parametrize("extra, needle", [
    ("languages: [zh, en]\n", "1 of 1 line(s) have no 'en' text and stages.translate.backend 'none' does not "
                              "machine-translate"),
    ("languages: [zh, en]\nstages: {translate: {backend: opus-mt-en-zh}}\n", "'opus-mt-en-zh' translates en→zh only, "
                                                                           "not zh→en"),
    ("languages: [zh, xx]\nstages: {translate: {backend: nllb-600m}}\n", "'nllb-600m' has no FLORES-200 code for "
                                                                       "['xx']"),
    ("languages: [zh, xx]\nstages: {translate: {backend: nllb-600m, options: {lang_codes: {xx: xxx_Latn}}}}\n", None),
    ("languages: [zh, en]\nstages: {translate: {backend: opus-mt-zh-en}}\n", None),
    ("languages: [zh, en]\nstages: {translate: {backend: marian-tiny}}\n", None),
])
def test_languages_the_screenplay_and_translate_backend_cannot_supply_are_refused(work, extra, needle) -> None:
    from pipeline.stages.script import read_source

    job = load_job(job_file(work, BASE + extra), [f"cache_dir={work / 'cache'}"])
    if needle is None:
        assert read_source(job).language == "zh"
    else:
        with pytest.raises(JobError, match=re.escape(needle)):
            read_source(job)


def test_screenplay_linked_to_itself_or_to_a_device(work) -> None:
    for name in ("self.fountain", "zero.fountain", "fifo.fountain"):
        (work / name).unlink(missing_ok=True)
    (work / "self.fountain").symlink_to("self.fountain")
    (work / "zero.fountain").symlink_to("/dev/zero")
    os.mkfifo(work / "fifo.fountain")
    for name, needle in (("self.fountain", "screenplay: self.fountain is a symlink loop"),
                         ("zero.fountain", "outside the job's folder"), ("fifo.fountain", "not a regular file")):
        res = invoke("validate", str(job_file(work, BASE.replace("ep.fountain", name))), f"cache_dir={work}/c")
        one_line_error(res, 2, needle)


@pytest.mark.parametrize("override, needle", [
    ("seed=" + "7" * 5000, "more than 30 digits"),
    ("seed=2026-13-45", "seed:"),
    ("stages.edit.preset=bogus", "stages.edit.preset"),
    ("stages.edit.label_text=", "stages.edit.label_text"),
    ("stages.video.num_gpus=1e999", "stages.video.num_gpus"),
    ("budget.max_cny=1e30", "budget.max_cny"),
])
def test_overrides_are_checked_like_the_file(work, override, needle) -> None:
    with pytest.raises(JobError, match=needle.replace(".", r"\.")):
        load_job(job_file(work, BASE), [override, f"cache_dir={work / 'cache'}"])


# ---------------------------------------------------------------- claim scenarios and money at the edges


@pytest.mark.parametrize("old, new, needle", [
    ('compute: "41234.56"', 'compute: "1e999999999"', "dramas[0].costs.compute: a number must be at most 10^15"),
    ('compute: "41234.56"', 'compute: "1e27"', "dramas[0].costs.compute"),
    ('compute: "41234.56"', "compute: " + "4" * 5000, "more than 30 digits"),
    ("year: 2026\n", "year: 2026\nyear: 2027\n", "duplicate key 'year'"),
    ('compute: "41234.56"', 'compute: "1", compute: "2"', "duplicate key 'compute'"),
    ("launched: 2026-03-01", "launched: 2026-02-30", "dramas[0].launched"),
])
def test_claim_scenarios_at_the_edges(work, old, new, needle) -> None:
    path = work / "scenario.yaml"
    path.write_text(SCENARIO.replace(old, new), encoding="utf-8")
    one_line_error(invoke("claims", "evaluate", str(path), "--json"), 2, needle)


def test_claim_inputs_that_are_not_files_or_text(work, tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "latin1.yaml").write_bytes(SCENARIO.replace("示例影业有限公司", "Société").encode("latin-1"))
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 10_000 + "]" * 10_000)
    with open(tmp_path / "huge.yaml", "wb") as fh:  # 60 MB, sparse
        fh.truncate(60 << 20)
    for name, needle in (("fifo.yaml", "not a regular file"), ("zero.yaml", "not a regular file"),
                         ("latin1.yaml", "not UTF-8"), ("deep.yaml", "nested more than"),
                         ("huge.yaml", "byte limit")):
        one_line_error(invoke("claims", "evaluate", str(tmp_path / name)), 2, needle)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "huairou.yaml").write_bytes(b"district: huairou\ntitle: \xff\xfe\n")
    path = work / "scenario.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    one_line_error(invoke("claims", "evaluate", str(path), "--policies", str(policies)), 2, "not UTF-8")


# ---------------------------------------------------------------- services that do not answer: exit 4, fast


def test_unreachable_services_exit_4_within_seconds(work) -> None:
    port = closed_port()
    job = str(job_file(work, BASE))
    cases = [
        (("report", "--drama", "d", "--tracking-uri", f"http://127.0.0.1:{port}", "--out", "r.csv"), 4),
        (("estimate", job, f"cache_dir={work}/c", "--tracking-uri", f"http://127.0.0.1:{port}"), 4),
        (("run", job, f"cache_dir={work}/c", "--ledger", f"postgresql://u:pw@127.0.0.1:{port}/db"), 4),
        (("run", job, f"cache_dir={work}/c", "--address", f"ray://127.0.0.1:{port}"), 4),
        (("submit", job, "--address", f"http://127.0.0.1:{port}"), 4),
        (("submit", job, "--address", f"ray://127.0.0.1:{port}"), 4),
        (("ledger", "show", "-l", f"postgresql://u@127.0.0.1:{port}/db"), 4),
        (("claims", "build", "--year", "2026", "--facts", "f.yaml", "--tracking-uri", f"http://127.0.0.1:{port}"),
         4),
        (("run", job, f"cache_dir={work}/c", "--ledger", "garbage://x"), 2),
        (("run", job, f"cache_dir={work}/c", "--tracking-uri", "garbage://x"), 2),
        (("submit", job, "--address", "garbage://x"), 2),
    ]
    for args, code in cases:
        started = time.monotonic()
        res = invoke(*args)
        assert res.exit_code == code, (args, res.output)
        assert "error:" in res.output and (code == 2 or "does not accept connections" in res.output
                                           or "cannot connect" in res.output), (args, res.output)
        assert time.monotonic() - started < 30, args  # a short connect timeout, not MLflow's minutes of retries
    assert not (work / "out").exists()


@pytest.mark.parametrize("url", ["postgresql://:abc/db", "postgresql://u:pw@:99999/db",
                                 "postgresql+psycopg://u@:0x10/db"])
def test_a_postgres_url_with_no_host_and_a_bad_port_is_bad_input_not_unreachable(work, url) -> None:
    res = invoke("run", str(job_file(work, BASE)), f"cache_dir={work}/c", "--ledger", url)
    one_line_error(res, 2, "--ledger postgresql://")
    assert "Port" in res.output and "host:port" in res.output, res.output
    assert "pw" not in res.output  # the password never reaches the message


def test_corrupt_databases_and_bad_output_paths_are_one_line(work) -> None:
    bad = work / "corrupt.db"
    bad.write_bytes(b"this is not a database, it is a text file\n" * 10)
    job = str(job_file(work, BASE))
    one_line_error(invoke("run", job, f"cache_dir={work}/c", "--ledger", f"sqlite:///{bad}"), 2,
                   "is not a SQLite database")
    one_line_error(invoke("report", "--drama", "d", "--tracking-uri", f"sqlite:///{bad}", "--out", "r.csv"), 2,
                   "is not a SQLite database")
    one_line_error(invoke("ledger", "verify", "-l", f"sqlite:///{bad}"), 2, "is not a SQLite database")
    for out, needle in (("/nonexistent/dir/r.csv", "does not exist"), (".", "is a folder"),
                        ("/dev/full", "not a regular file")):
        one_line_error(invoke("report", "--drama", "d", "--out", out), 2, needle)
    one_line_error(invoke("claims", "packet", str(work / "scenario.yaml"), "--programme", "x", "--out",
                          str(work / "ep.fountain")), 2, "is a file, not a folder")


def test_ledger_cli_numbers_are_bounded(work) -> None:
    from pipeline.metering.ledger import Ledger

    url = f"sqlite:///{work / 'small-ledger.db'}"
    with Ledger.open(url) as led:
        led.append("usage", {"n": 1}, "k1")
        led.checkpoint()
    for args, needle in ((("prove", str(10**30)), "beyond any ledger index"),
                         (("prove", "0", "--size", "-5"), "--size"),
                         (("prove", "0", "--size", "9"), "at most the ledger's size"),
                         (("show", "--tail", str(10**20)), "--tail"),
                         (("verify", "--pubkey", "/nonexistent"), "no such file"),
                         (("bill-idle", "--node", "n", "--gpu-model", "x", "--gpus", str(10**30), "--from",
                           "2026-01-01T00:00:00+08:00", "--to", "2026-01-02T00:00:00+08:00"), "--gpus")):
        one_line_error(invoke("ledger", *args, "-l", url), 2, needle)
    one_line_error(invoke("submit", str(job_file(work, BASE)), "--address", "http://x:1", "--parallel", "-3"), 2,
                   "--parallel")


def test_a_gpu_no_node_has_is_refused_before_any_work(tmp_path, ray_session) -> None:
    """Ray would keep the stage pending for ever on a cluster without such a GPU."""
    import ray

    gpus = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    path = write_job(tmp_path / "job", stages={"video": {"num_gpus": gpus + 1}})
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    res = invoke("run", str(path), f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}", "--quiet",
                 "--ledger", ledger, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    one_line_error(res, 2, f"stages.video.num_gpus: {gpus + 1:g} GPU(s) asked, but no live node")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- hypothesis: any input, exit 0/2/4 only

TOKENS = ["", "-1", "-5", "0", "1", "2026", str(10**30), "1e999999999", "NaN", "inf", "\x00", "a\nb", "../x",
          "/dev/zero", "/dev/full", "/nonexistent/x", ".", "garbage://x", "ray://127.0.0.1:{port}",
          "http://127.0.0.1:{port}", "postgresql://u@127.0.0.1:{port}/d", "sqlite:///{work}/corrupt.db",
          "{work}/scenario.yaml", "{work}/job.yaml", "{work}/ep.fountain", "é" * 300, "d", "ep01", "--json"]
COMMANDS = [["validate", "{job}"], ["estimate", "{job}", "cache_dir={work}/c"], ["report", "--drama"],
            ["report", "--drama", "d", "--out"], ["report", "--drama", "d", "--tracking-uri"],
            ["ledger", "show", "--tail"], ["ledger", "prove"], ["ledger", "prove", "0", "--size"],
            ["ledger", "verify", "--pubkey"], ["ledger", "show", "-l"], ["claims", "evaluate"],
            ["claims", "evaluate", "{work}/scenario.yaml", "--policies"],
            ["claims", "build", "--year"], ["claims", "packet", "{work}/scenario.yaml", "--programme", "x", "--out"],
            ["submit", "{job}", "--parallel"], ["submit", "{job}", "--address"], ["mlflow", "pending"],
            ["run", "{job}", "cache_dir={work}/c", "--ledger"], ["run", "{job}", "cache_dir={work}/c", "--address"]]


@settings(FUZZ, max_examples=60)
@given(command=st.sampled_from(COMMANDS), args=st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)),
                                                        min_size=1, max_size=3))
def test_any_cli_arguments_exit_0_2_or_4(work, command, args) -> None:
    (work / "corrupt.db").write_bytes(b"not a database\n" * 8)
    (work / "scenario.yaml").write_text(SCENARIO, encoding="utf-8")
    job = job_file(work, BASE + "stages: {edit: {preset: bogus}}\n")  # `run` must never start work here
    fill = {"port": closed_port(), "work": work, "job": job}
    argv = [a.format(**fill) for a in command] + [a.format(**fill) if "{" in a and "}" in a else a for a in args]
    if argv[0] == "run" and len(argv) > 4:
        argv = argv[:5]  # the job stays the bad one above
    res = invoke(*argv)
    assert res.exit_code in (0, 2, 4), (argv, res.exit_code, res.output)


SECTIONS = ["script", "storyboard", "video", "tts", "translate", "dub", "edit"]
KEYS = ["preset", "audio_bitrate", "label_text", "font", "num_gpus", "num_cpus", "crf", "width", "fps", "languages",
        "label_seconds", "backend", "max_retries", "actors", "resources"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=10),
                   st.sampled_from(["veryfast", "bogus", "160k", "loud", "", " ", "\x00", "2026-13-45", "1e999999",
                                    "zh", "ko", "[zh, ko]", "[en, zh]", "AI生成", "a\nb", "9" * 400]))


@settings(FUZZ, max_examples=150)
@given(overrides=st.lists(st.one_of(
    st.builds(lambda s, k, v: f"stages.{s}.{k}={v}", st.sampled_from(SECTIONS), st.sampled_from(KEYS), VALUES),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["seed", "title", "company", "drama", "episode", "languages",
                                                        "budget.max_cny", "profile"]), VALUES)), max_size=4))
def test_any_override_validates_or_is_refused(work, overrides) -> None:
    """Whatever validate accepts is renderable: each accepted job passes the schema's render checks."""
    try:
        with deadline():
            job = load_job(job_file(work, BASE), [*overrides, f"cache_dir={work / 'cache'}"])
    except JobError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    assert_renderable(job)


def assert_renderable(job) -> None:
    """What the edit stage hands to ffmpeg and the output folder is made of, for an accepted job."""
    from pipeline.job import SLUG, X264_PRESETS

    e = job.stages.edit
    assert e.preset in X264_PRESETS and e.label_text.strip() and 32 <= int(e.audio_bitrate[:-1]) <= 512
    assert SLUG.fullmatch(job.drama) and SLUG.fullmatch(job.episode) and job.languages[0] == "zh"
    assert not any(ord(c) < 32 or c == "\x7f" for c in job.title + job.company + e.label_text + e.font)
    assert all(s.num_gpus <= 64 and s.num_cpus <= 1024 for s in job.stages.backends().values())


JOB_FIELDS = st.fixed_dictionaries({}, optional={
    "title": VALUES, "company": VALUES, "seed": VALUES, "languages": st.one_of(VALUES, st.lists(VALUES, max_size=3)),
    "budget": st.dictionaries(st.just("max_cny"), VALUES), "drama": VALUES, "episode": VALUES,
    "stages": st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3),
                              max_size=3)})


@settings(FUZZ, max_examples=120)
@given(fields=JOB_FIELDS)
def test_any_job_file_that_validates_can_be_rendered(work, fields) -> None:
    body = {"drama": "d", "episode": "e1", "screenplay": "ep.fountain", **fields}
    path = work / "fuzz-job.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    res = invoke("validate", str(path), f"cache_dir={work / 'cache'}")
    assert res.exit_code in (0, 2), res.output
    if res.exit_code == 0:
        assert_renderable(load_job(path, [f"cache_dir={work / 'cache'}"]))


# backends whose construction is cheap here (no weights to find): the fuzz builds each accepted one
FUZZ_BACKENDS = [("script", "fountain"), ("script", "openai-api"), ("script", "llm-tiny"),
                 ("storyboard", "procedural"), ("storyboard", "wan-t2i-api"), ("storyboard", "seedream-api"),
                 ("storyboard", "flux-tiny"), ("video", "camera-move"), ("video", "wan-api"),
                 ("video", "seedance-api"), ("video", "kling-api"), ("video", "wan-tiny"), ("dub", "espeak-ng"),
                 ("dub", "qwen-tts-api"), ("dub", "vits-tiny"), ("dub", "piper"), ("translate", "none"),
                 ("translate", "llm-api"), ("translate", "marian-tiny")]
OPTION_VALUES = st.one_of(VALUES, st.sampled_from(["https://api.example.com/v1", "ftp://x", "https://:9x/", "720p",
                                                   "4k", "std", "i2v", "fp8", "int4", "cuda:1", "auto", "float16",
                                                   "DASHSCOPE_API_KEY", "sk-live-123", "[{i}]", "720*1280", "top"]),
                          st.dictionaries(st.sampled_from(["kind", "path", "scale", "en", "zh", "mode", "x"]),
                                          VALUES, max_size=2), st.lists(VALUES, max_size=2))


@st.composite
def backend_options(draw):
    from models import options
    from models.registry import resolve

    section, name = draw(st.sampled_from(FUZZ_BACKENDS))
    fields = list(options.options_model(resolve(section, name)).model_fields)
    keys = st.sampled_from([*fields, "bogus", "steps", "api_key", "model"])
    return section, name, draw(st.dictionaries(keys, OPTION_VALUES, max_size=4))


@settings(FUZZ, max_examples=200)
@given(picked=backend_options())
def test_any_backend_options_validate_or_are_refused_and_what_passes_builds(work, picked) -> None:
    """Options through the schema: refused with a line naming stages.<stage>.options (exit 2), or accepted
    and then the backend is built from them without an error the schema should have caught (a TypeError for
    an option the constructor does not take, an AttributeError, a KeyError)."""
    from models import options
    from models.registry import resolve
    from pipeline.errors import UserError

    section, name, opts = picked
    body = {"drama": "d", "episode": "e1", "screenplay": "ep.fountain",
            "stages": {section: {"backend": name, "options": opts}}}
    path = work / "fuzz-options.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    try:
        with deadline():
            job = load_job(path, [f"cache_dir={work / 'cache'}"])
    except JobError as exc:
        assert "Traceback" not in str(exc) and "sk-live-123" not in str(exc)
        return
    settings_ = job.stages.backends()[section]
    kwargs = options.validated(resolve(section, name), settings_.options)
    assert set(kwargs) <= set(settings_.options) and None not in kwargs.values()
    try:
        options.construct(resolve(section, name), settings_.options)
    except (UserError, ValueError, OSError):  # a missing key, font, weights or a cross-field rule: preflight's
        pass


@settings(FUZZ, max_examples=25)
@given(picked=backend_options())
def test_cli_validate_of_any_backend_options_exits_0_or_2(work, picked) -> None:
    section, name, opts = picked
    body = {"drama": "d", "episode": "e1", "screenplay": "ep.fountain",
            "stages": {section: {"backend": name, "options": opts}}}
    path = work / "fuzz-options-cli.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    res = invoke("validate", str(path), f"cache_dir={work / 'cache'}")
    assert res.exit_code in (0, 2), res.output
    assert "sk-live-123" not in res.output


DRAMA_FIELDS = st.dictionaries(st.sampled_from(["id", "launched", "produced_in", "costs", "orientation", "episodes",
                                                "colour"]), VALUES, max_size=4)


@settings(FUZZ, max_examples=80)
@given(year=st.one_of(st.integers(1990, 2200), VALUES), company=st.dictionaries(st.sampled_from(
    ["name", "districts", "headcount", "overseas_revenue", "rd_spend"]), VALUES, max_size=3),
    dramas=st.lists(DRAMA_FIELDS, max_size=3), compute=VALUES)
def test_any_claim_scenario_evaluates_or_is_refused(work, year, company, dramas, compute) -> None:
    base = yaml.safe_load(SCENARIO)
    base["year"] = year
    base["company"].update(company)
    base["dramas"][0]["costs"]["compute"] = compute
    base["dramas"] += dramas
    path = work / "fuzz-scenario.yaml"
    path.write_text(yaml.safe_dump(base, allow_unicode=True), encoding="utf-8")
    res = invoke("claims", "evaluate", str(path), "--json")
    assert res.exit_code in (0, 2), res.output


def test_the_hostile_inputs_stayed_in_bounded_memory(work) -> None:
    """Runs after every other test of this module (FIFOs, /dev/zero, 60 MB files, alias bombs, 10,000-deep
    nesting, 5,000-digit numbers): this process's peak RSS (VmHWM) rose by less than 1 GiB over its peak
    when the module started — one /dev/zero scenario once took 9.8 GB."""
    grown_kib = peak_rss_kib() - work.peak_at_start_kib
    assert grown_kib < 1 << 20, f"peak RSS grew by {grown_kib // 1024} MiB"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_a_gpu_group_at_zero_replicas_is_a_node_the_job_can_wait_for(tmp_path, ray_session, monkeypatch) -> None:
    """A KubeRay GPU worker group with no pod yet (autoscaler on) satisfies the check; one with maxReplicas
    0 does not. The group's resources come from the cluster config the autoscaler writes into Ray's GCS."""
    from types import SimpleNamespace

    from ray._private import state as ray_state

    from pipeline import runner
    from pipeline.errors import UserError
    from pipeline.job import load_job

    job = load_job(write_job(tmp_path / "job", stages={"video": {"num_gpus": 8}}), [f"output_dir={tmp_path / 'o'}"])
    groups = [SimpleNamespace(resources={"CPU": 16, "GPU": 8, "memory": 1 << 36}, max_count=4)]
    config = SimpleNamespace(node_group_configs=groups)
    monkeypatch.setattr(ray_state.state, "get_cluster_config", lambda: config)
    assert runner.scalable_node_groups() == [{"CPU": 16.0, "GPU": 8.0, "memory": float(1 << 36)}]
    runner.check_resources(job)  # the autoscaler can start an 8-GPU node: wait for it, do not refuse
    groups[0].max_count = 0
    with pytest.raises(UserError, match=r"stages\.video\.num_gpus: 8 GPU\(s\) asked, but no live node .* \(nor any "
                                         r"node its autoscaler may start"):
        runner.check_resources(job)
    monkeypatch.setattr(ray_state.state, "get_cluster_config", lambda: None)  # no autoscaler: live nodes only
    assert runner.scalable_node_groups() == []
