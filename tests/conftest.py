"""Shared fixtures: one local Ray cluster per test session (ray.init costs ~5 s), temp work dirs."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# the ledger's signing key and pinned keys live in a config dir apart from any ledger: one throwaway per session
os.environ.setdefault("MICRODRAMA_CONFIG_DIR", __import__("tempfile").mkdtemp(prefix="microdrama-config-"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, namespace="microdrama-tests")
    yield ray
    # left running until interpreter exit: other session-scoped users may still need it
