"""The KubeRay manifests, checked at schema level without a Kubernetes cluster: kinds, the image, GPU requests
that fit the GPU profile, secrets and volumes wired into every Ray pod, and a RayJob whose entrypoint the
entrypoint's own parser accepts."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "jobs" / "kuberay"
SECRET = "microdrama-secrets"


def _load(name: str) -> dict:
    docs = list(yaml.safe_load_all((KUBERAY / name).read_text("utf-8")))
    assert len(docs) == 1, f"{name}: one manifest per file"
    return docs[0]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _load("raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load("rayjob.yaml")


def _groups(spec: dict) -> dict[str, dict]:
    groups = {"head": spec["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in spec["workerGroupSpecs"]})
    return groups


def _ray_container(group: dict) -> dict:
    (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
    return container


def _dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)


def test_kinds_and_api_versions(cluster, rayjob) -> None:
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert set(_groups(cluster["spec"])) == {"head", "cpu", "gpu"}


def test_the_rayjob_cluster_is_the_raycluster(cluster, rayjob) -> None:
    assert rayjob["spec"]["rayClusterSpec"] == cluster["spec"]  # one cluster design, two ways to run it


def test_every_pod_runs_the_project_image(cluster, rayjob) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {_ray_container(g)["image"] for g in _groups(cluster["spec"]).values()}
    images |= {c["image"] for c in rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name.endswith("/microdrama") and tag == version  # pinned to a release, never :latest


def test_ray_version_matches_the_image(cluster) -> None:
    assert cluster["spec"]["rayVersion"] == _dockerfile_arg("RAY_VERSION")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}  # Ray >= 2.52 token auth, all pods


def test_gpu_group_requests_nvidia_gpus(cluster) -> None:
    gpu = _groups(cluster["spec"])["gpu"]
    res = _ray_container(gpu)["resources"]
    assert int(res["limits"]["nvidia.com/gpu"]) >= 1
    assert res["requests"].get("nvidia.com/gpu") == res["limits"]["nvidia.com/gpu"]
    tolerations = gpu["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    for name in ("head", "cpu"):
        assert "nvidia.com/gpu" not in _ray_container(_groups(cluster["spec"])[name])["resources"]["limits"]


def _entrypoint_args(rayjob: dict):
    from jobs.entrypoint import parse_args

    command = rayjob["spec"]["entrypoint"]
    assert "jobs.entrypoint" in command
    argv = shlex.split(command.split("&&")[-1])
    assert argv[:3] == ["python", "-m", "jobs.entrypoint"]
    return parse_args(argv[3:])


def test_rayjob_runs_a_batch_and_cleans_up(rayjob) -> None:
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] == "K8sJobMode" and spec["submitterPodTemplate"]["spec"]["containers"]
    args = _entrypoint_args(rayjob)
    assert [str(t) for t in args.targets] == ["/data/jobs/batch"]
    overrides = dict(o.split("=", 1) for o in args.overrides)
    assert overrides["output_dir"].startswith("/data/") and overrides["cache_dir"].startswith("/data/")


def test_gpu_stages_fit_the_gpu_group(rayjob) -> None:
    """Every resident GPU actor of the batch's profile fits a GPU pod, and all of them fit the group at once."""
    from pipeline.job import load_profile

    args = _entrypoint_args(rayjob)
    profile = load_profile(dict(o.split("=", 1) for o in args.overrides)["profile"])
    gpu = _groups(rayjob["spec"]["rayClusterSpec"])["gpu"]
    per_pod = int(_ray_container(gpu)["resources"]["limits"]["nvidia.com/gpu"])
    wants = [(s.get("num_gpus", 0), s.get("actors", 1)) for s in profile.stages.values() if s.get("num_gpus", 0)]
    assert wants, f"profile {profile.name} asks for no GPU: the RayJob would not need its GPU group"
    assert max(g for g, _ in wants) <= per_pod
    assert sum(g * n for g, n in wants) <= per_pod * gpu["maxReplicas"]
    assert args.min_nodes <= 1 + sum(g["replicas"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    mounts = {m["mountPath"] for m in _ray_container(gpu)["volumeMounts"]}
    assert "/models" in mounts  # gpu profiles never download weights: they are on the volume


def test_secrets_and_volumes_reach_every_ray_pod(cluster) -> None:
    for name, group in _groups(cluster["spec"]).items():
        pod = group["template"]["spec"]
        container = _ray_container(group)
        env = {e["name"]: e for e in container["env"]}
        for var in ("MLFLOW_TRACKING_URI", "MICRODRAMA_LEDGER"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == SECRET, (name, var)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert {m["name"] for m in mounts.values()} <= set(volumes), name
        key_file = Path(env["MICRODRAMA_LEDGER_KEY_FILE"]["value"])
        key_mount = mounts[str(key_file.parent)]
        secret = volumes[key_mount["name"]]["secret"]
        assert secret["secretName"] == SECRET and key_file.name in {i["path"] for i in secret["items"]}
        assert volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "microdrama-data"
        assert mounts["/dev/shm"]  # Ray's object store needs more than the default 64 MiB
        assert env["MICRODRAMA_MLFLOW_QUEUE"]["value"].startswith("/data/")


def test_pods_run_as_the_images_non_root_user(cluster) -> None:
    user = re.findall(r"^USER (\d+)(?::(\d+))?$", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    for name, group in _groups(cluster["spec"]).items():
        ctx = group["template"]["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True and str(ctx["runAsUser"]) == user[0] != "0", name
