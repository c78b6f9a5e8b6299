"""Load: 20 episodes queued at once in one driver finish in bounded memory, into one ledger, every record
exactly once, and the finance report adds up to the ledger to the fen.

The episodes run as 20 driver threads calling `run_job` (what `microdrama run` and the batch entrypoint
call): all 120 stage executions are submitted to Ray within a second or two and Ray schedules them on the
2 CPUs, so this exercises the shared parts under contention — one named ledger writer actor serialising
every append (start entries, usage records, cost lines, 20 checkpoints), the shared cache, Ray's queue,
and MLflow logging from many threads (serialised by episode.MLFLOW_LOCK)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import psutil

from pipeline.job import load_job
from pipeline.money import exact_sum
from tests.tiny_jobs import check_exactly_once, cli, ledger_entries, places, write_job

EPISODES = 20
DRAMA = "load-drama"


class PeakRss(threading.Thread):
    """Samples the RSS of this driver and of every process of its Ray session: GCS, raylet and agents (their
    command lines name the session) and all their descendants — the workers and model actors, which rename
    themselves (`ray::IDLE`, `ray::StageWorker`) and so can only be found as the raylet's children."""

    def __init__(self, session: str, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.session, self.every_s = session, every_s
        self.driver = self.total = self.workers = 0
        self._halt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.wait(self.every_s):
            driver = me.memory_info().rss
            ray_procs: dict[int, psutil.Process] = {}
            for p in psutil.process_iter(["cmdline"]):
                if any(self.session in arg for arg in (p.info["cmdline"] or [])):
                    ray_procs[p.pid] = p
                    try:
                        ray_procs.update((c.pid, c) for c in p.children(recursive=True))
                    except psutil.Error:
                        pass
            total, workers = driver, 0
            for pid, p in ray_procs.items():
                if pid == me.pid:
                    continue
                try:
                    rss, name = p.memory_info().rss, " ".join(p.cmdline()[:1])
                except psutil.Error:  # ended between listing and reading
                    continue
                total += rss
                workers += name.startswith("ray::")
            self.driver, self.total = max(self.driver, driver), max(self.total, total)
            self.workers = max(self.workers, workers)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def test_twenty_episodes_at_once(tmp_path, ray_session, monkeypatch) -> None:
    import ray

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder (./mlruns)

    from pipeline.episode import run_job
    from pipeline.finance.report import rows

    env = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    jobs = [load_job(write_job(tmp_path / f"ep{i:02d}", drama=DRAMA, episode=f"ep{i:02d}", seed=100 + i,
                               profile="tiny"),
                     places(tmp_path)) for i in range(1, EPISODES + 1)]
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    sampler = PeakRss(session)
    sampler.start()
    before = psutil.Process().memory_info().rss
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=EPISODES) as pool:
        manifests = list(pool.map(lambda job: run_job(job, quiet=True, **env), jobs))
    took = time.monotonic() - started
    sampler.stop()

    assert all((job.out_path / "episode.mp4").is_file() for job in jobs)
    assert [m["mlflow"]["status"] for m in manifests] == ["logged"] * EPISODES
    by_key = check_exactly_once(env["ledger_url"])
    runs = {m["run_id"]: m for m in manifests}
    assert {u["job"] for u in by_key.values()} == set(runs)
    for run_id, m in runs.items():
        mine = [u for u in by_key.values() if u["job"] == run_id]
        ok = sorted(u["stage"] for u in mine if u["status"] in ("ok", "cached"))
        assert ok == sorted(["script", "translate", "storyboard", "dub", "video", "edit"]), (run_id, ok)
        assert m["cost"]["usage_records"] == len(mine)
    assert cli("ledger", "verify", "--ledger", env["ledger_url"]).exit_code == 0

    report = rows(env["tracking_uri"], DRAMA, ledger_url=env["ledger_url"])
    totals = {r["episode"]: Decimal(r["cost.total_cny"]) for r in report if r["stage"] == "TOTAL"}
    assert len(totals) == EPISODES
    amounts: dict[str, list[str]] = {}
    for e in ledger_entries(env["ledger_url"], "cost"):
        amounts.setdefault(e.body["episode"], []).append(e.body["amount"])
    ledger_by_episode = {episode: exact_sum(a) for episode, a in amounts.items()}
    assert totals == ledger_by_episode  # to the last digit the ledger carries
    for unit in (Decimal("0.01"), Decimal("1e-20")):  # to the fen — and, as tiny episodes cost < 1 fen, far below
        assert {k: v.quantize(unit) for k, v in totals.items()} == \
            {k: v.quantize(unit) for k, v in ledger_by_episode.items()}
        assert exact_sum(totals.values()).quantize(unit) == exact_sum(ledger_by_episode.values()).quantize(unit)
    assert sum(ledger_by_episode.values()) > 0

    mib = 2**20
    print(f"\n{EPISODES} episodes in {took:.1f} s; driver RSS {before / mib:.0f} → peak {sampler.driver / mib:.0f} MiB; "
          f"driver + Ray processes peak {sampler.total / mib:.0f} MiB, at most {sampler.workers} Ray workers at once")
    assert sampler.workers >= 2  # the sampler saw the workers and model actors, not only GCS and raylet
    assert sampler.driver - before < 400 * mib  # the driver holds 20 small manifests, not 20 episodes
    assert sampler.total < 6 * 1024 * mib
