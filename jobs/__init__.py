"""Ray job entrypoints (entrypoint.py), KubeRay manifests (kuberay/), the image's pinned requirements
(image_lock.py) and a one-machine multi-node cluster for tests and benchmarks (local_cluster.py)."""
