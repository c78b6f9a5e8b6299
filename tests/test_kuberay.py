"""The KubeRay manifests, checked without a Kubernetes cluster: strict validation against the vendored KubeRay
1.6 and 1.7 CRD schemas, Pod Security "restricted" on every pod, the exact submitter command KubeRay builds run
through bash, GPU requests that fit the GPU profile, secrets and volumes wired into every Ray pod."""
from __future__ import annotations

import gzip
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "jobs" / "kuberay"
SCHEMAS = ROOT / "tests" / "data" / "kuberay"
SECRET = "microdrama-secrets"
KUBERAY_VERSIONS = ("v1.6.2", "v1.7.0")


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


def test_every_pod_runs_the_project_images_pinned_by_digest(cluster, rayjob) -> None:
    """Ray pods run the worker image, the submitter the slim driver image; both the release's, by digest."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {_ray_container(g)["image"] for g in _groups(cluster["spec"]).values()}
    images |= {_ray_container(g)["image"] for g in _groups(rayjob["spec"]["rayClusterSpec"]).values()}
    (submitter,) = rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert len(images) == 1
    for image, name in ((images.pop(), "/microdrama"), (submitter["image"], "/microdrama-driver")):
        ref, _, digest = image.partition("@")
        repo, _, tag = ref.rpartition(":")
        assert repo.endswith(name) and tag == version, image  # a release, never :latest
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{image}: not pinned by digest"


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

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.entrypoint"]
    return parse_args(argv[3:])


def test_rayjob_runs_a_batch_and_keeps_a_failed_clusters_logs(rayjob) -> None:
    spec = rayjob["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["submitterPodTemplate"]["spec"]["containers"]
    # KubeRay's own validation (validation.go): deletionRules exclude shutdownAfterJobFinishes, and
    # DeleteWorkers cannot be combined with the autoscaler
    assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec
    rules = {(r["condition"].get("jobStatus") or r["condition"]["jobDeploymentStatus"]): r
             for r in spec["deletionStrategy"]["deletionRules"]}
    assert all(r["policy"] != "DeleteWorkers" for r in rules.values())
    assert rules["SUCCEEDED"]["policy"] == "DeleteCluster"
    for failed in ("FAILED", "Failed"):
        assert rules[failed]["condition"]["ttlSeconds"] >= 86400  # a day or more to read the logs
    assert 0 < spec["preRunningDeadlineSeconds"] < spec["activeDeadlineSeconds"]
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
    # the autoscaler adds nodes only for work the cluster was given: waiting for more than start would hang
    assert args.min_nodes <= 1 + sum(g["replicas"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    mounts = {m["mountPath"] for m in _ray_container(gpu)["volumeMounts"]}
    assert "/models" in mounts  # gpu profiles never download weights: they are on the volume


def _node_resources(group: dict) -> dict[str, float]:
    """What a pod of the group offers Ray: CPUs and GPUs from its limits, custom resources from rayStartParams
    as `ray start --resources=…` reads them once KubeRay has put the value on the command line (bash unquotes)."""
    limits = _ray_container(group)["resources"]["limits"]
    out = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
    custom = group.get("rayStartParams", {}).get("resources")
    if custom:
        (word,) = shlex.split(custom)
        out.update({k: float(v) for k, v in json.loads(word).items()})
    return out


def test_every_stage_is_pinned_to_its_worker_group(cluster, rayjob) -> None:
    """With the RayJob's overrides, the CPU stages can run only on cpu pods (their custom resource) and the GPU
    stages only on gpu pods, the preflight accepts the cluster, and the cpu pods have the weights translate reads."""
    from pipeline.job import load_job
    from pipeline.runner import _fit_problems, check_resources

    job = load_job(ROOT / "configs" / "episodes" / "demo" / "job.yaml", _entrypoint_args(rayjob).overrides)
    for spec in (cluster["spec"], rayjob["spec"]["rayClusterSpec"]):
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs no stage
        groups = {name: _node_resources(g) for name, g in _groups(spec).items() if name != "head"}
        assert groups["cpu"]["cpu_group"] >= 1 and groups["gpu"]["gpu_group"] >= 1
        assert "cpu_group" not in groups["gpu"] and groups["cpu"]["GPU"] == 0
        check_resources(job, list(groups.values()))
        where = {name: sorted(g for g, res in groups.items() if not _fit_problems(name, s, [res]))
                 for name, s in job.stages.placements().items()}
        assert where == {"script": ["cpu"], "translate": ["cpu"], "edit": ["cpu"], "storyboard": ["gpu"],
                         "video": ["gpu"], "dub": ["gpu"]}, where
        cpu_mounts = {m["mountPath"] for m in _ray_container(_groups(spec)["cpu"])["volumeMounts"]}
        assert "/models" in cpu_mounts


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
        pinned = env["MICRODRAMA_LEDGER_PUBKEY"]["valueFrom"]["configMapKeyRef"]  # verification on every pod
        assert pinned == {"name": "microdrama-ledger-trust", "key": "MICRODRAMA_LEDGER_PUBKEY"}, name


def test_pods_run_as_the_images_non_root_user(cluster) -> None:
    user = re.findall(r"^USER (\d+)(?::(\d+))?$", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    for name, group in _groups(cluster["spec"]).items():
        ctx = group["template"]["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True and str(ctx["runAsUser"]) == user[0] != "0", name


# ---------------------------------------------------------------- the vendored KubeRay CRD schemas, strictly
def _strict(node):
    """The CRD's structural schema as JSON Schema, unknown fields rejected (the API server prunes them
    silently, so a misspelt field would be lost without a word)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _schema(kind: str, version: str) -> dict:
    data = json.loads(gzip.decompress((SCHEMAS / f"{kind}-{version}.schema.json.gz").read_bytes()))
    return _strict(data["openAPIV3Schema"])


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "rayclusters"), ("rayjob.yaml", "rayjobs")])
def test_manifests_validate_strictly_against_the_kuberay_crds(name, kind, version) -> None:
    import jsonschema

    manifest = _load(name)
    errors = sorted(jsonschema.Draft7Validator(_schema(kind, version)).iter_errors(manifest), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def test_the_strict_schema_catches_a_misspelt_field() -> None:
    import jsonschema

    manifest = _load("rayjob.yaml")
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    errors = list(jsonschema.Draft7Validator(_schema("rayjobs", "v1.7.0")).iter_errors(manifest))
    assert any("maxReplica" in e.message for e in errors)


# ---------------------------------------------------------------- Pod Security "restricted", every pod
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _restricted(pod: dict, where: str) -> list[str]:
    """The checks of the Kubernetes Pod Security Standard "restricted" (v1.30) that a pod spec can fail."""
    bad = []
    ctx = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            bad.append(f"{where}: {flag}")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"{where}: volume {v['name']} is {kinds - RESTRICTED_VOLUMES}")
    for c in pod["containers"] + pod.get("initContainers", []):
        at = f"{where}/{c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            bad.append(f"{at}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{at}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{at}: capabilities must drop ALL")
        if not (sc.get("runAsNonRoot", ctx.get("runAsNonRoot")) is True):
            bad.append(f"{at}: runAsNonRoot must be true")
        if sc.get("runAsUser", ctx.get("runAsUser")) == 0:
            bad.append(f"{at}: runAsUser 0")
        seccomp = sc.get("seccompProfile", ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{at}: seccompProfile must be RuntimeDefault")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{at}: hostPort")
    return bad


def _pods(cluster_spec: dict) -> dict[str, dict]:
    return {name: g["template"]["spec"] for name, g in _groups(cluster_spec).items()}


def test_every_pod_passes_pod_security_restricted(cluster, rayjob) -> None:
    pods = {**_pods(cluster["spec"]), "submitter": rayjob["spec"]["submitterPodTemplate"]["spec"]}
    problems = [p for name, pod in pods.items() for p in _restricted(pod, name)]
    # KubeRay injects the autoscaler container into the head pod with autoscalerOptions' securityContext
    autoscaler = {"containers": [{"name": "autoscaler", **cluster["spec"]["autoscalerOptions"]}],
                  "securityContext": pods["head"]["securityContext"]}
    problems += _restricted(autoscaler, "head")
    assert not problems, problems


def test_the_restricted_check_catches_a_root_container(cluster) -> None:
    pod = json.loads(json.dumps(_pods(cluster["spec"])["cpu"]))
    pod["containers"][0]["securityContext"] = {"runAsUser": 0}
    assert len(_restricted(pod, "cpu")) >= 3


def test_ray_pods_keep_their_session_dir_on_a_volume_with_ephemeral_storage(cluster) -> None:
    for name, group in _groups(cluster["spec"]).items():
        container = _ray_container(group)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp/ray"]], name
        for side in ("requests", "limits"):
            assert container["resources"][side].get("ephemeral-storage"), (name, side)


def test_gpu_groups_start_at_zero_and_the_autoscaler_adds_them(cluster) -> None:
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        if "nvidia.com/gpu" in _ray_container(group)["resources"]["limits"]:
            assert group["replicas"] == 0 and group["minReplicas"] == 0, group["groupName"]


# ---------------------------------------------------------------- the submitter command as KubeRay builds it
def kuberay_submit_command(rayjob: dict, address: str, job_id: str) -> str:
    """`common.BuildJobSubmitCommand` of KubeRay 1.7 for K8sJobMode, joined as the controller joins it
    (`strings.Join(cmd, " ")`, then `/bin/bash -ce -- <that>` in the submitter container)."""
    entrypoint = rayjob["spec"]["entrypoint"].strip()
    health = (f"python -c \"import urllib.request; r=urllib.request.urlopen('{address}/api/gcs_healthz', "
              "timeout=10); exit(0 if b'success' in r.read() else 1)\"")
    cmd = ["until", health, ">/dev/null", "2>&1", ";", "do", "echo",
           json.dumps(f"Waiting for Ray Dashboard GCS to become healthy at {address} ..."), ";", "sleep", "2",
           ";", "done", ";",
           "if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then",
           "ray", "job", "submit", "--address", address, "--no-wait", "--submission-id", job_id,
           "--", entrypoint, ";", "fi", ";", "ray", "job", "logs", "--address", address, "--follow", job_id]
    return " ".join(cmd)


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"success")

    def log_message(self, *args):
        pass


STUB = """#!{python}
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if os.path.basename(sys.argv[0]) == "python":
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
sys.exit(1 if sys.argv[1:3] == ["job", "status"] else 0)
"""


def _run_submitter(rayjob: dict, tmp_path: Path) -> tuple[int, list[list[str]]]:
    """The submitter container's command, run by bash with `ray` and `python` recorded (python still runs)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ray", "python"):
        (bin_dir / name).write_text(STUB.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    address = f"http://127.0.0.1:{server.server_address[1]}"
    command = kuberay_submit_command(rayjob, address, "microdrama-batch-x1")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(["/bin/bash", "-ce", "--", command], env=env, timeout=120, cwd=tmp_path,
                              capture_output=True)
    finally:
        server.shutdown()
    return proc.returncode, [json.loads(line) for line in calls.read_text().splitlines()]


def test_the_submitter_passes_the_whole_entrypoint_to_ray(rayjob, tmp_path) -> None:
    """The whole entrypoint reaches `ray job submit`, nothing of it runs in the submitter pod, and what the
    head then runs (Ray joins the words with spaces and runs them in a shell) is the batch the entrypoint's
    parser accepts."""
    code, recorded = _run_submitter(rayjob, tmp_path)
    assert code == 0
    pythons = [c for c in recorded if c[0] == "python"]
    assert all(c[1] == "-c" and "gcs_healthz" in c[2] for c in pythons), pythons  # only the health probe
    (submit,) = [c for c in recorded if c[:3] == ["ray", "job", "submit"]]
    on_head = submit[submit.index("--") + 1:]
    assert on_head == shlex.split(rayjob["spec"]["entrypoint"])
    assert recorded[-1][:4] == ["ray", "job", "logs", "--address"]
    from jobs.entrypoint import parse_args

    argv = shlex.split(" ".join(on_head))
    assert argv[:3] == ["python", "-m", "jobs.entrypoint"]
    assert [str(t) for t in parse_args(argv[3:]).targets] == ["/data/jobs/batch"]


def test_a_shell_operator_in_the_entrypoint_runs_in_the_submitter(rayjob, tmp_path) -> None:
    """The failure the test above guards against: with `cd /app && python …` Ray gets only `cd /app`, and the
    batch runs in the submitter pod (here: and fails, as it has no /data)."""
    broken = {"spec": {**rayjob["spec"], "entrypoint": "cd / && python -m jobs.entrypoint /data/jobs/batch"}}
    code, recorded = _run_submitter(broken, tmp_path)
    (submit,) = [c for c in recorded if c[:3] == ["ray", "job", "submit"]]
    assert submit[submit.index("--") + 1:] == ["cd", "/"]
    assert ["python", "-m", "jobs.entrypoint", "/data/jobs/batch"] in recorded and code != 0


def test_pin_image_rewrites_every_image_of_that_name() -> None:
    from jobs.pin_image import pin

    text = (KUBERAY / "rayjob.yaml").read_text("utf-8")
    worker = "registry.example.com/microdrama:0.1.0@sha256:" + "ab" * 32
    driver = "registry.example.com/microdrama-driver:0.1.0@sha256:" + "cd" * 32
    pinned, count = pin(text, {"microdrama": worker, "microdrama-driver": driver})
    assert count == 2  # the anchored worker image and the submitter's
    job = yaml.safe_load(pinned)
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == driver
    assert {_ray_container(g)["image"] for g in _groups(job["spec"]["rayClusterSpec"]).values()} == {worker}


def test_the_signing_key_as_mounted_with_fs_group_raises_no_warning(tmp_path, caplog) -> None:
    """A secret volume with fsGroup is group-readable by the pod's own gid (mode 0440): no warning; a
    world-readable key still warns."""
    import logging

    from pipeline.metering.ledger_sign import load_or_create_key

    key = tmp_path / "keys" / "ledger.key"
    key.parent.mkdir()
    load_or_create_key(key)
    os.chown(key, -1, os.getgid())
    key.chmod(0o440)
    with caplog.at_level(logging.WARNING):
        load_or_create_key(key)
    assert "readable by others" not in caplog.text
    key.chmod(0o444)
    with caplog.at_level(logging.WARNING):
        load_or_create_key(key)
    assert "readable by others" in caplog.text
