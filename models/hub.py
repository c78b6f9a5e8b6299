"""Shared plumbing for weight-loading backends: where weights are, dtype/device choice, seeded generators."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")


class WeightsMissing(UserError):
    """A real-model backend whose weights are not on this machine (raised at construction, before any work)."""


def require_packages(*names: str) -> None:
    """Fail at backend selection (registry.resolve turns this into 'install the models extra') without importing."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def hf_cache_dir() -> str:
    """The hub cache this process would read (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _download_hint(stage: str, model_id: str) -> str:
    local = f"/models/{model_id.split('/')[-1]}"
    return (f"download it where the worker can read it: `huggingface-cli download {model_id} --local-dir {local}` "
            f"and set stages.{stage}.options.weights_dir={local}, or point HF_HOME at a cache that holds it")


def weights_problems(stage: str, backend: str, model_id: str, weights_dir: str | None,
                     probe: str) -> list[str]:
    """Problems (as values) with the weights of `model_id`: empty when a local copy is available.

    `weights_dir` must be a folder holding `probe` (e.g. model_index.json for diffusers, config.json
    for transformers); without it the hub cache must hold `probe` for `model_id` (no network is used).
    """
    where = f"stages.{stage}.backend={backend!r}"
    if weights_dir:
        path = Path(weights_dir).expanduser()
        if not (path / probe).is_file():
            return [f"{where}: stages.{stage}.options.weights_dir={weights_dir!r} does not hold {probe} "
                    f"of {model_id}; {_download_hint(stage, model_id)}"]
        return []
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, probe)
    if isinstance(found, str) and Path(found).is_file():
        return []
    return [f"{where}: the weights of {model_id} are not on this machine (looked for {probe} in the hub "
            f"cache {hf_cache_dir()}); {_download_hint(stage, model_id)}"]


def model_id_option(backend: str, default: str | None, override: str | None, stage: str) -> str | None:
    """The model to load: `override` (options.model_id) or the registered default; tiny backends take none."""
    if override and default is None:
        raise ValueError(f"stages.{stage}.options.model_id: {backend} builds its tiny model in code; "
                         f"pick a real backend to load {override}")
    return override or default


def require_weights(stage: str, backend: str, model_id: str, weights_dir: str | None, probe: str) -> str:
    """The path or id to load from (local only); raises WeightsMissing naming the model and the fix."""
    problems = weights_problems(stage, backend, model_id, weights_dir, probe)
    if problems:
        raise WeightsMissing(problems)
    return str(Path(weights_dir).expanduser()) if weights_dir else model_id


def torch_dtype(name: str) -> Any:
    """torch dtype from its option name; a clear error lists the choices."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def pick_device(device: str) -> str:
    """'auto' → 'cuda' when a CUDA device is visible, else 'cpu'; anything else is used as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def generator(seed: int, device: str = "cpu") -> Any:
    """A torch.Generator seeded for reproducible sampling (on the model's device)."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed) % (2**63))

