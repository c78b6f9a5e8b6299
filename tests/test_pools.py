"""Shared model pools (pipeline/pools.py): one pool per backend configuration whatever the episode, and a batch
of tiny-profile episodes on the session's Ray loads each model once per replica — not once per episode — while
every usage record still belongs to the run that asked for it."""
from __future__ import annotations

from collections import Counter

from pipeline.job import load_job
from tests.tiny_jobs import check_exactly_once, places, write_job

RESIDENT = ("translate", "storyboard", "dub", "video")
EPISODES, SHOTS = 3, 2
# A quarter CPU per replica: the four pools hold one of the session's two CPUs and leave one for the plain
# tasks (script, edit), so no pool has to make room — on a cluster too small for its pools they would, and
# their models would load again (that is tested by test_tiny_episode's single run on 2 CPUs).
QUARTER = {stage: {"num_cpus": 0.25} for stage in ("translate", "storyboard", "tts", "video")}


def test_pool_key_is_the_backend_config_not_the_episode(tmp_path) -> None:
    from pipeline.pools import pool_spec

    a = load_job(write_job(tmp_path / "a", drama="d1", episode="ep01", profile="tiny"), places(tmp_path))
    b = load_job(write_job(tmp_path / "b", drama="d2", episode="ep07", seed=99, profile="tiny"), places(tmp_path))
    c = load_job(write_job(tmp_path / "c", profile="tiny", stages={"video": {"options": {"steps": 3}}}),
                 places(tmp_path))
    d = load_job(write_job(tmp_path / "d", profile="tiny", stages={"video": {"resources": {"gpu-video": 1},
                                                                            "max_actors": 3}}), places(tmp_path))
    assert all(pool_spec(a, s).key == pool_spec(b, s).key for s in RESIDENT)  # other drama, episode, seed
    assert pool_spec(a, "video").key != pool_spec(c, "video").key  # other options: another model
    assert pool_spec(a, "video").key != pool_spec(d, "video").key  # other resources: another worker group
    assert (pool_spec(d, "video").actors, pool_spec(d, "video").max_actors) == (1, 3)


def test_max_actors_below_actors_is_refused(tmp_path) -> None:
    import pytest

    from pipeline.errors import JobError

    with pytest.raises(JobError, match="max_actors"):
        load_job(write_job(tmp_path / "j", profile="tiny", stages={"video": {"actors": 2, "max_actors": 1}}),
                 places(tmp_path))


def test_a_batch_loads_each_model_once_per_replica(tmp_path, ray_session, monkeypatch) -> None:
    import ray

    from pipeline.batch import run_batch
    from pipeline.pools import get_pools, pool_spec

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder (./mlruns)
    stages = {**QUARTER, "video": {**QUARTER["video"], "max_actors": 2}}  # video may grow to 2 on queue depth
    paths = [write_job(tmp_path / f"ep{i:02d}", drama="pool-drama", episode=f"ep{i:02d}", seed=40 + i,
                       shots=SHOTS, profile="tiny", stages=stages, languages=["zh", "en"])
             for i in range(1, EPISODES + 1)]
    jobs = [load_job(p, places(tmp_path)) for p in paths]
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    summary = run_batch(paths, jobs, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", ledger_url=ledger,
                        parallel=EPISODES)
    assert summary["ok"], summary["episodes"]

    stats = ray.get(get_pools().stats.remote())
    for stage in RESIDENT:
        pool = stats[pool_spec(jobs[0], stage).key]
        replicas = pool["replicas"] + pool["retired"]
        loads = sum(r["loads"] for r in replicas)
        assert loads == len(replicas), (stage, replicas)  # once per replica (English subtitles need Marian) ...
        assert len(replicas) <= (2 if stage == "video" else 1), (stage, replicas)  # ... not per episode (3)
        served = sum(r["executions"] for r in replicas)
        assert served == EPISODES * (1 if stage == "translate" else SHOTS), (stage, replicas)

    by_key = check_exactly_once(ledger)  # every record once, attributed to the run that asked for it
    runs = {e["run_id"] for e in summary["episodes"]}
    per_run = Counter((u["job"], u["stage"]) for u in by_key.values() if u["status"] == "ok")
    for run in runs:
        assert [per_run[(run, s)] for s in ("script", "translate", "storyboard", "dub", "video", "edit")] == \
            [1, 1, SHOTS, SHOTS, SHOTS, 1], run
    assert {u["job"] for u in by_key.values()} == runs
