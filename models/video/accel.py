"""Acceleration options of the diffusers video backends: each on/off from the profile, applied once at load,
and described in the stage's params so a claim can show how the compute was spent.

Options (``stages.video.options``):

- ``lora`` / ``lora_2``: a local ``.safetensors`` LoRA (e.g. lightx2v's 4-step step-distillation LoRA, in
  its original ``diffusion_model.blocks.N.…lora_down/lora_up/alpha`` keys, or diffusers' keys) loaded with
  ``load_lora_weights``; ``lora_2`` goes into Wan2.2's second (low-noise) expert. Either a path or
  ``{path, scale}``. ``fuse_lora`` (default true) fuses it into the weights and drops the adapter layers.
- ``distilled``: the LoRA removes classifier-free guidance: guidance is forced to 1.0 (one forward a step)
  and the default step count becomes ``distilled_steps`` (4). A step cache is refused with it.
- ``quantize``: ``int8`` (torchao int8 weight-only) or ``fp8`` (torchao float8 dynamic activations and
  weights; CUDA compute capability >= 8.9) on the DiT(s).
- ``attention``: a diffusers attention-dispatcher backend (``native``, ``flash``, ``sage``, ``_native_cudnn``…).
- ``compile``: regional ``torch.compile`` of the repeated DiT blocks; true, or torch.compile keyword
  arguments (``{mode: max-autotune-no-cudagraphs}``, ``{backend: eager}``).
- ``vae_tiling``: the VAE decodes in tiles (less memory at 720p and up).
- ``cache``: ``{kind: fbc, threshold: 0.05}`` (first-block cache) or ``{kind: mag, threshold, mag_ratios,
  retention_ratio, max_skip_steps}`` (MagCache), diffusers' hooks, for non-distilled runs only.
- ``context_parallel``: Ulysses degree N over N GPUs (diffusers' ContextParallelConfig); needs a
  torch.distributed process group of N ranks (torchrun), else a clear error.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CACHE_KINDS = ("fbc", "mag")
QUANTIZE = ("int8", "fp8")
DISTILLED_STEPS = 4


def _where(name: str) -> str:
    return f"stages.video.options.{name}"


@dataclass(frozen=True)
class LoRA:
    path: str
    scale: float = 1.0

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]


def _lora(name: str, value: Any) -> LoRA | None:
    if value in (None, False, ""):
        return None
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict) or "path" not in value or set(value) - {"path", "scale"}:
        raise ValueError(f"{_where(name)}: give a path to a .safetensors LoRA, or {{path: ..., scale: 1.0}}")
    return LoRA(str(Path(str(value["path"])).expanduser()), float(value.get("scale", 1.0)))


def _cache(value: Any) -> dict[str, Any] | None:
    if value in (None, False):
        return None
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or value.get("kind") not in CACHE_KINDS:
        raise ValueError(f"{_where('cache')}.kind: choose one of {', '.join(CACHE_KINDS)} "
                         f"(e.g. {{kind: fbc, threshold: 0.05}})")
    allowed = {"fbc": {"kind", "threshold"},
               "mag": {"kind", "threshold", "mag_ratios", "retention_ratio", "max_skip_steps", "calibrate"}}
    extra = set(value) - allowed[value["kind"]]
    if extra:
        raise ValueError(f"{_where('cache')}: unknown key(s) {', '.join(sorted(extra))} for kind "
                         f"{value['kind']}; allowed: {', '.join(sorted(allowed[value['kind']]))}")
    if value["kind"] == "mag" and not value.get("mag_ratios") and not value.get("calibrate"):
        raise ValueError(f"{_where('cache')}.mag_ratios: MagCache needs the model's magnitude ratios "
                         "(or calibrate: true for one run that prints them)")
    return dict(value)


@dataclass(frozen=True)
class Accel:
    """The parsed acceleration options; `describe()` is what goes into the stage's params."""

    lora: LoRA | None = None
    lora_2: LoRA | None = None
    fuse_lora: bool = True
    distilled: bool = False
    quantize: str | None = None
    attention: str | None = None
    compile: dict[str, Any] | None = None
    vae_tiling: bool = False
    cache: dict[str, Any] | None = None
    context_parallel: int = 1
    applied: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def parse(cls, *, lora: Any = None, lora_2: Any = None, fuse_lora: bool = True, distilled: bool = False,
              quantize: str | None = None, attention: str | None = None, compile: Any = False,
              vae_tiling: bool = False, cache: Any = None, context_parallel: int = 1) -> Accel:
        if quantize not in (None, "none", *QUANTIZE):
            raise ValueError(f"{_where('quantize')}: choose one of none, {', '.join(QUANTIZE)}, got {quantize!r}")
        if attention is not None:
            from diffusers.models.attention_dispatch import AttentionBackendName

            names = [b.value for b in AttentionBackendName]
            if attention not in names:
                raise ValueError(f"{_where('attention')}: unknown attention backend {attention!r}; choose one of "
                                 f"native, flash, sage, _native_cudnn, flex, xformers, … ({len(names)} in all)")
            if attention.endswith("_hub"):
                raise ValueError(f"{_where('attention')}: {attention} fetches its kernels from a hub at run time; "
                                 "install the kernel's package instead (flash: flash-attn, sage: sageattention)")
            _attention_usable(attention)
        if compile is True:
            compile = {}
        elif compile in (False, None):
            compile = None
        elif not isinstance(compile, dict):
            raise ValueError(f"{_where('compile')}: true, false, or torch.compile keyword arguments")
        if int(context_parallel) < 1:
            raise ValueError(f"{_where('context_parallel')}: the number of GPUs (>= 1), got {context_parallel}")
        parsed = cls(lora=_lora("lora", lora), lora_2=_lora("lora_2", lora_2), fuse_lora=bool(fuse_lora),
                     distilled=bool(distilled), quantize=None if quantize == "none" else quantize,
                     attention=attention, compile=compile, vae_tiling=bool(vae_tiling), cache=_cache(cache),
                     context_parallel=int(context_parallel))
        if parsed.distilled and parsed.cache:
            raise ValueError(f"{_where('cache')}: a step cache is for non-distilled runs; a {DISTILLED_STEPS}-step "
                             "distilled model has no redundant steps to skip (drop cache or distilled)")
        if parsed.distilled and parsed.lora is None:
            raise ValueError(f"{_where('distilled')}: true needs the step-distillation LoRA in {_where('lora')}")
        return parsed

    def check_files(self) -> None:
        """The LoRA files are on this machine (checked at construction, after the model's weights)."""
        from models.hub import WeightsMissing

        missing = [f"stages.video.options.{key}: {lora.path} is not a file; put the LoRA on the worker first "
                   "(e.g. lightx2v's 4-step distillation LoRA, never downloaded at run time) and give its path"
                   for key, lora in (("lora", self.lora), ("lora_2", self.lora_2))
                   if lora is not None and not Path(lora.path).is_file()]
        if missing:
            raise WeightsMissing(missing)

    @property
    def changes_modules(self) -> bool:
        """Whether applying changes the pipeline's modules (weights, hooks, compiled forwards)."""
        return any((self.lora, self.lora_2, self.quantize, self.attention, self.compile is not None,
                    self.vae_tiling, self.cache, self.context_parallel > 1))

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("applied")
        for key in ("lora", "lora_2"):
            lora = getattr(self, key)
            d[key] = None if lora is None else {"file": Path(lora.path).name, "sha256": lora.digest,
                                                "scale": lora.scale}
        d["applied"] = list(self.applied)
        return d

    # ------------------------------------------------------------ applying

    def apply(self, pipe: Any, steps: int) -> Any:
        """Apply every option to a loaded pipeline, in the order that composes: LoRA (fused) before
        quantization, quantization before compile, the cache hook last."""
        transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
        if self.lora_2 is not None and getattr(pipe, "transformer_2", None) is None:
            raise ValueError(f"{_where('lora_2')}: this model has one expert; lora_2 is for Wan2.2 A14B's second")
        self._load_loras(pipe)
        if self.quantize:
            for t in transformers:
                quantize(t, self.quantize)
            self.applied.append(f"quantize:{self.quantize}")
        if self.attention:
            for t in transformers:
                t.set_attention_backend(self.attention)
            self.applied.append(f"attention:{self.attention}")
        if self.context_parallel > 1:
            self._context_parallel(transformers)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
            self.applied.append("vae_tiling")
        if self.cache:
            for t in transformers:
                t.enable_cache(cache_config(self.cache, steps))
            self.applied.append(f"cache:{self.cache['kind']}")
        if self.compile is not None:
            for t in transformers:
                t.compile_repeated_blocks(**self.compile)
            self.applied.append("compile:regional")
        return pipe

    def _load_loras(self, pipe: Any) -> None:
        loaded = []
        for key, lora, into_2 in (("lora", self.lora, False), ("lora_2", self.lora_2, True)):
            if lora is None:
                continue
            kwargs = {"load_into_transformer_2": True} if into_2 else {}
            pipe.load_lora_weights(lora.path, adapter_name=key, **kwargs)
            loaded.append((key, lora))
        if not loaded:
            return
        pipe.set_adapters([k for k, _ in loaded], [lo.scale for _, lo in loaded])
        self.applied.append("lora:" + ",".join(k for k, _ in loaded))
        if self.fuse_lora:
            components = ["transformer_2"] if [k for k, _ in loaded] == ["lora_2"] else \
                ["transformer", "transformer_2"] if len(loaded) == 2 else ["transformer"]
            pipe.fuse_lora(components=components, lora_scale=1.0)
            pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
            self.applied.append("lora:fused")

    def _context_parallel(self, transformers: list[Any]) -> None:
        import torch.distributed as dist
        from diffusers import ContextParallelConfig

        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() != self.context_parallel:
            raise RuntimeError(f"{_where('context_parallel')}={self.context_parallel} needs a torch.distributed "
                               f"group of {self.context_parallel} ranks, one per GPU (start the worker with "
                               f"torchrun --nproc-per-node {self.context_parallel})")
        for t in transformers:
            t.enable_parallelism(config=ContextParallelConfig(ulysses_degree=self.context_parallel))
        self.applied.append(f"context_parallel:ulysses={self.context_parallel}")


def _attention_usable(name: str) -> None:
    """The package behind an attention backend is installed (flash-attn, sageattention, xformers…)."""
    from diffusers.models import attention_dispatch as ad

    try:
        ad._check_attention_backend_requirements(ad.AttentionBackendName(name))
    except RuntimeError as e:
        raise ValueError(f"{_where('attention')}={name}: {e}") from None


def cache_config(spec: dict[str, Any], steps: int) -> Any:
    """diffusers' FirstBlockCacheConfig, or MagCacheConfig (its ratios interpolated to `steps`), from the option."""
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig

    kw = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "fbc":
        return FirstBlockCacheConfig(**kw)
    return MagCacheConfig(num_inference_steps=steps, **kw)


def quantize(module: Any, kind: str) -> None:
    """torchao weights in place: int8 weight-only, or float8 dynamic activation + weight (Hopper/Ada)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("torchao") is None:
        raise RuntimeError(f"{_where('quantize')}={kind} needs torchao (pip install torchao)")
    from torchao.quantization import quantize_

    if kind == "fp8":
        if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
            raise RuntimeError(f"{_where('quantize')}=fp8 needs a CUDA GPU of compute capability >= 8.9 "
                               "(Ada, Hopper); use int8 elsewhere")
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    else:
        from torchao.quantization import Int8WeightOnlyConfig

        quantize_(module, Int8WeightOnlyConfig())
