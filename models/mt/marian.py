"""Translation backends on transformers seq2seq models (OPUS-MT Marian, NLLB-200, tiny Marian), glossary-safe.

Character names are protected with placeholders (models.mt.glossary); a line whose placeholders the
model drops or repeats is re-translated piecewise around the names, so names always come out exactly
as the glossary says. `params` reports how many lines needed that fallback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models import hub, options as opt
from models.mt import glossary as gl
from models.registry import BackendResult

NLLB_CODES = {"zh": "zho_Hans", "zh-Hant": "zho_Hant", "en": "eng_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang",
              "fr": "fra_Latn", "es": "spa_Latn", "de": "deu_Latn", "pt": "por_Latn", "ru": "rus_Cyrl",
              "ar": "arb_Arab", "th": "tha_Thai", "vi": "vie_Latn", "id": "ind_Latn", "ms": "zsm_Latn"}

hub.require_packages("torch", "transformers", "sentencepiece")


@dataclass(frozen=True)
class MTSpec:
    name: str
    model_id: str | None  # None: tiny random Marian from models.tiny
    pairs: tuple[tuple[str, str], ...] = ()  # () = any pair (tiny, NLLB via codes)
    family: str = "marian"  # "marian" | "nllb"
    target_prefix: str = ""  # multi-target OPUS models want e.g. ">>cmn_Hans<< "
    num_beams: int = 4
    extra: dict[str, Any] = field(default_factory=dict)


SPECS = {
    "marian-tiny": MTSpec("marian-tiny", None, num_beams=1),
    "opus-mt-zh-en": MTSpec("opus-mt-zh-en", "Helsinki-NLP/opus-mt-zh-en", pairs=(("zh", "en"),)),
    "opus-mt-en-zh": MTSpec("opus-mt-en-zh", "Helsinki-NLP/opus-mt-en-zh", pairs=(("en", "zh"),),
                            target_prefix=">>cmn_Hans<< "),
    "nllb-600m": MTSpec("nllb-600m", "facebook/nllb-200-distilled-600M", family="nllb"),
}


def _placeholder(v: str) -> str:
    if "{i}" not in v:
        raise ValueError("must contain {i} (the glossary entry's number), e.g. [{i}]")
    return v


class Seq2SeqOptions(opt.WeightsOptions):
    dtype: opt.Dtype = "float32"
    num_beams: int | None = opt.Field(None, ge=1, le=16)  # default: the model's
    max_new_tokens: int = opt.Field(256, ge=1, le=4096)
    batch_size: int = opt.Field(16, ge=1, le=1024)
    lang_codes: dict[opt.Lang, opt.Annotated[str, opt.Field(pattern=r"^[a-z]{3}_[A-Z][a-z]{3}$")]] | None = \
        opt.Field(None, max_length=200)  # NLLB: language → FLORES code, e.g. {yue: yue_Hant}
    placeholder: opt.Annotated[opt.Text, opt.Field(min_length=3, max_length=40),
                               opt.AfterValidator(_placeholder)] = gl.PLACEHOLDER


class Seq2SeqTranslate:
    """Batch translation through a resident seq2seq model and its tokenizer.

    Options: ``model_id`` (another checkpoint of the family), ``weights_dir``, ``device``, ``dtype``,
    ``num_beams``, ``max_new_tokens`` (also capped at 3 per source token + 8), ``batch_size``, ``lang_codes`` (NLLB: extra language → FLORES code), ``placeholder`` (format with ``{i}``),
    ``tiny_seed`` (weights seed of marian-tiny).
    """

    Options = Seq2SeqOptions
    spec: MTSpec = SPECS["marian-tiny"]
    resident = True
    num_gpus = 0

    def __init__(self, *, model_id: str | None = None, weights_dir: str | None = None, device: str = "auto",
                 dtype: str = "float32", num_beams: int | None = None, max_new_tokens: int = 256, batch_size: int = 16,
                 lang_codes: dict[str, str] | None = None, placeholder: str = gl.PLACEHOLDER,
                 tiny_seed: int = 0) -> None:
        s = self.spec
        if "{i}" not in placeholder:
            raise ValueError(f"stages.translate.options.placeholder must contain {{i}}, got {placeholder!r}")
        hub.torch_dtype(dtype)
        self.dtype, self.placeholder, self.tiny_seed = dtype, placeholder, tiny_seed
        self.device = "cpu" if device == "auto" and s.model_id is None else device
        self.num_beams = int(num_beams or s.num_beams)
        self.max_new_tokens, self.batch_size = int(max_new_tokens), max(1, int(batch_size))
        self.codes = {**NLLB_CODES, **(lang_codes or {})}
        self.model_id = hub.model_id_option(s.name, s.model_id, model_id, "translate")
        self.source = (hub.require_weights("translate", s.name, self.model_id, weights_dir, "config.json")
                       if self.model_id else None)
        self.loads = 0
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            if self.model_id is None:
                from models import tiny

                self._loaded = tiny.marian(self.tiny_seed)
            else:
                from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

                model = AutoModelForSeq2SeqLM.from_pretrained(self.source, torch_dtype=hub.torch_dtype(self.dtype),
                                                              local_files_only=True)
                model = model.to(hub.pick_device(self.device)).eval()
                self._loaded = (model, AutoTokenizer.from_pretrained(self.source, local_files_only=True))
            self.loads += 1
        return self._loaded

    @classmethod
    def pair_problem(cls, src: str, tgt: str, options: dict[str, Any]) -> str | None:
        """Why this backend cannot translate src → tgt with these options (None: it can). Asked by validate
        (pipeline.stages.translate.supply_problems) before any work, and again at the call."""
        s = cls.spec
        if s.pairs and (src, tgt) not in s.pairs:
            return (f"translates {', '.join(f'{a}→{b}' for a, b in s.pairs)} only, not {src}→{tgt}; pick a model "
                    f"for that pair (e.g. nllb-600m or llm-api) or drop the language")
        if s.family == "nllb":
            codes = {**NLLB_CODES, **(options.get("lang_codes") or {})}
            missing = [x for x in (src, tgt) if x not in codes]
            if missing:
                return (f"has no FLORES-200 code for {missing}; add stages.translate.options.lang_codes, "
                        f"e.g. {{{missing[0]}: xxx_Latn}}")
        return None

    def check_pair(self, src: str, tgt: str) -> None:
        problem = self.pair_problem(src, tgt, {"lang_codes": self.codes})
        if problem:
            raise ValueError(f"translate {self.spec.name}: {problem}")

    def _run(self, texts: list[str], src: str, tgt: str) -> list[str]:
        import torch

        model, tok = self.load()
        gen: dict[str, Any] = dict(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, do_sample=False)
        if self.spec.family == "nllb":
            tok.src_lang = self.codes[src]
            gen["forced_bos_token_id"] = tok.convert_tokens_to_ids(self.codes[tgt])
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            batch = [self.spec.target_prefix + t for t in texts[i:i + self.batch_size]]
            enc = tok(batch, return_tensors="pt", padding=True, truncation=True).to(model.device)
            # no runaway output: at most 3 tokens per source token (+8), per line, so a line's translation
            # does not depend on the lines batched with it
            budgets = [min(self.max_new_tokens, 3 * int(n) + 8) for n in enc["attention_mask"].sum(dim=1)]
            with torch.no_grad():
                ids = model.generate(**enc, **{**gen, "max_new_tokens": max(budgets)})
            out += [tok.decode(row[:1 + b], skip_special_tokens=True).strip() for row, b in zip(ids, budgets)]
        return out

    def _translate_pieces(self, texts: list[str], src: str, tgt: str) -> list[str]:
        """Translate non-empty texts (empty ones stay empty)."""
        todo = [i for i, t in enumerate(texts) if t.strip()]
        done = self._run([texts[i] for i in todo], src, tgt) if todo else []
        out = [""] * len(texts)
        for i, t in zip(todo, done):
            out[i] = t
        return out

    def translate(self, texts: list[str], *, src: str, tgt: str, glossary: dict[str, str]) -> BackendResult:
        self.check_pair(src, tgt)
        protected = [gl.protect(t, glossary, self.placeholder) for t in texts]
        first = self._translate_pieces([p.text for p in protected], src, tgt)
        results, fallback, sent = [], [], sum(len(p.text) for p in protected)
        for i, (p, out) in enumerate(zip(protected, first)):
            restored, bad = gl.restore(out, p.targets, self.placeholder)
            if bad or (p.targets and gl.clashes(texts[i], len(p.targets), self.placeholder)):
                fallback.append(i)
            results.append(restored)
        for i in fallback:
            parts = gl.split(texts[i], glossary)
            plain = self._translate_pieces([t for is_term, t in parts if not is_term], src, tgt)
            sent += sum(len(t) for is_term, t in parts if not is_term)
            it = iter(plain)
            results[i] = gl.join([t if is_term else next(it) for is_term, t in parts], tgt)
        return BackendResult(
            outputs={"texts": results},
            ai_usage=({"tool": self.spec.name, "unit": "char", "quantity": sent},),
            params={"model": self.model_id or f"tiny-random-marian(seed={self.tiny_seed})", "src": src,
                    "tgt": tgt, "lines": len(texts), "glossary_terms": len(glossary),
                    "glossary_fallback_lines": len(fallback), "num_beams": self.num_beams})


class MarianTiny(Seq2SeqTranslate):
    spec = SPECS["marian-tiny"]


class OpusMtZhEn(Seq2SeqTranslate):
    spec = SPECS["opus-mt-zh-en"]


class OpusMtEnZh(Seq2SeqTranslate):
    spec = SPECS["opus-mt-en-zh"]


class Nllb600M(Seq2SeqTranslate):
    spec = SPECS["nllb-600m"]
    num_gpus = 1
