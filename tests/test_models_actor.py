"""Resident backends on Ray: each actor loads its model once, however many shots it serves."""
from __future__ import annotations

from models.actor import BackendHost, BackendPool
from models.registry import BackendResult


def test_host_counts_loads_not_calls():
    host = BackendHost("translate", "marian-tiny", {})
    assert host.load_count() == 0  # lazy: nothing loaded before the first call
    for text in ("你好。", "签了它。", "再见。"):
        result = host.call("translate", [text], src="zh", tgt="en", glossary={})
        assert isinstance(result, BackendResult) and len(result.outputs["texts"]) == 1
    assert host.load_count() == 1 and host.info()["calls"] == 3


def test_pool_loads_once_per_actor_not_per_shot(ray_session):
    ray = ray_session
    pool = BackendPool("translate", "marian-tiny", {}, actors=2, num_gpus=0, num_cpus=0.5)
    try:
        shots = [f"第{i}个镜头：林晓签了合同。" for i in range(6)]
        refs = pool.map("translate", [(([s],), {"src": "zh", "tgt": "en", "glossary": {"林晓": "Lin Xiao"}})
                                      for s in shots])
        assert all(isinstance(r, ray.ObjectRef) for r in refs)
        results = ray.get(refs, timeout=300)
        assert all("Lin Xiao" in r.outputs["texts"][0] for r in results)
        after = pool.submit_after(refs[0], "translate", ["再见。"], src="zh", tgt="en", glossary={})
        assert len(ray.get(after, timeout=120).outputs["texts"]) == 1  # ran once its upstream was done
        assert pool.load_counts() == [1, 1]  # = actors, not shots
        info = pool.info()
        assert sorted(i["calls"] for i in info) == [3, 4] and len({i["pid"] for i in info}) == 2
    finally:
        pool.shutdown()


def test_resident_gpu_stages_ask_ray_for_their_gpus(tmp_path):
    """Each replica of a stage's shared pool asks Ray for the profile's num_gpus (and custom resources)."""
    from pipeline.job import load_job
    from pipeline.pools import pool_spec, replica_options
    from tests.tiny_jobs import places, write_job

    job = load_job(write_job(tmp_path / "job", profile="tiny", stages={
        "video": {"num_gpus": 0.5, "actors": 2, "resources": {"render": 1}}}), places(tmp_path))
    spec = pool_spec(job, "video")
    kw = replica_options(spec)
    assert spec.actors == spec.max_actors == 2
    assert kw["num_gpus"] == 0.5 and kw["num_cpus"] == 1 and kw["resources"] == {"render": 1}
    assert kw["max_restarts"] == 2  # a dead GPU worker is replaced, its shots retried
