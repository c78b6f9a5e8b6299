"""Planned units of a job priced from the table in force: seconds per shot, images, characters, tokens.

Hosted backends say, from their options alone (no key, no network), what one call will bill:
`planned(options, **facts) -> [{"tool", "unit", "quantity"}]`. This module prices those items (Decimal,
exact), finds items the price tables lack (an error before the run, never a zero), and plans a whole
episode from its screenplay before any history exists (`microdrama estimate`). Compute is not planned
here: it is measured, and estimated from history by pipeline/finance/estimate.py.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipeline.errors import UserError
from pipeline.job_backends import SECTIONS, backend_planner, backend_settings, read_source
from pipeline.money import exact_sum

CHARS_PER_S = {"zh": 4.5, "ja": 7.0, "ko": 6.0}  # spoken pace for planning; other languages by words
WORDS_PER_S = 2.6
TOKENS_PER_CHAR = {"zh": 1.0, "ja": 1.0, "ko": 1.0}  # CJK ≈ 1 token/char on Qwen/DeepSeek tokenisers
TOKENS_PER_WORD = 1.4


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _book(book: Any = None) -> Any:
    if book is not None:
        return book
    from pipeline.metering.sink import price_book

    return price_book()


def price_items(items: list[dict[str, Any]], *, at: dt.datetime | None = None, book: Any = None) -> Decimal:
    """Σ quantity × rate / per over `items` at `at` (default now); PriceError for an unpriced item."""
    from pipeline.metering.prices import PriceError

    book, at = _book(book), at or _now()
    total: list[Decimal] = []
    for item in items:
        price = book.price_for(item["tool"], at)
        if price.unit != item["unit"]:
            raise PriceError(f"item {item['tool']!r} is priced per {price.unit} in {price.table_id}, "
                             f"but the backend bills it per {item['unit']}")
        total.append(Decimal(str(item["quantity"])) * price.price / Decimal(price.per))
    return exact_sum(total)


def missing_prices(items: list[str], *, at: dt.datetime | None = None, book: Any = None) -> list[str]:
    """The billed items no table in force prices."""
    from pipeline.metering.prices import PriceError

    book, at = _book(book), at or _now()
    out = []
    for item in items:
        try:
            book.price_for(item, at)
        except PriceError:
            out.append(item)
    return out


def preflight_prices(job: Any, *, at: dt.datetime | None = None, book: Any = None) -> list[str]:
    """One problem per billed item of the job's hosted backends that no price table prices now."""
    problems = []
    for section, settings in job.stages.backends().items():
        planner = backend_planner(section, settings.backend)
        if planner is None:
            continue
        items = sorted({i["tool"] for i in planner(dict(settings.options), **_probe_facts(job, section))})
        for item in missing_prices(items, at=at, book=book):
            problems.append(f"stages.{section}: backend {settings.backend!r} bills {item!r}, which no price "
                            f"table in force prices; add it to configs/prices/ (with its source page) before "
                            f"running — it would not be billed as zero")
    return problems


def gpu_price_problems(job: Any, gpu_models: list[str], *, at: dt.datetime | None = None,
                       book: Any = None) -> list[str]:
    """Before any GPU work: every GPU model a stage asking for GPUs may land on must have a gpu-hour price in
    force (GPU time is never billed as zero). `gpu_models` are the cluster's (Ray's accelerator types)."""
    from pipeline.metering.prices import PriceError

    gpu_stages = [f"stages.{section}" for section, settings in job.stages.backends().items()
                  if float(settings.num_gpus) > 0]
    if not gpu_stages:
        return []
    book, at = _book(book), at or _now()
    problems = []
    for model in sorted(set(gpu_models)):
        try:
            book.price_for(book.gpu_item(model), at)
        except PriceError as exc:
            problems.append(f"{', '.join(gpu_stages)}: asks for GPUs and this cluster has {model} GPUs, which no "
                            f"price table in force prices ({exc}); add a gpu-hour item with gpu_model: {model} "
                            "to configs/prices/ (with its source page) before running")
    return problems


def _probe_facts(job: Any, section: str) -> dict[str, Any]:
    """Facts that name every item a backend can bill (the quantity does not matter here)."""
    if section == "video":
        v = job.stages.video
        return {"duration_s": 5.0, "width": v.width, "height": v.height, "fps": v.fps}
    if section == "storyboard":
        return {"width": job.stages.storyboard.width, "height": job.stages.storyboard.height}
    if section == "dub":
        return {"text": "你好", "lang": job.primary_language}
    return {"text": "你好", "lang": job.primary_language, "targets": job.languages[1:]}


def spoken_seconds(text: str, lang: str) -> float:
    """How long a line takes to say, for planning (the dub stage measures the real audio)."""
    base = lang.split("-")[0]
    if base in CHARS_PER_S:
        return len([c for c in text if not c.isspace()]) / CHARS_PER_S[base]
    return max(1, len(text.split())) / WORDS_PER_S


def tokens(text: str, lang: str) -> int:
    base = lang.split("-")[0]
    if base in TOKENS_PER_CHAR:
        return math.ceil(len(text) * TOKENS_PER_CHAR[base])
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


def shot_seconds(shot: Any, lang: str, dub: Any) -> float:
    """A shot's planned length: its explicit duration, else lead-in + lines + gaps + tail (≥ min_shot_s)."""
    if shot.duration_s:
        return float(shot.duration_s)
    lines = [spoken_seconds(line.text.get(lang) or next(iter(line.text.values()), ""), lang) for line in shot.lines]
    spoken = sum(lines) + dub.gap_s * max(0, len(lines) - 1)
    return max(dub.min_shot_s, dub.lead_in_s + spoken + dub.tail_s)


@dataclass(frozen=True)
class PlannedLine:
    stage: str
    backend: str
    tool: str
    unit: str
    quantity: Decimal
    amount: Decimal
    rate: Decimal
    per: int
    table: str
    source: str


def plan_episode(job: Any, script: Any, *, at: dt.datetime | None = None, book: Any = None) -> dict[str, Any]:
    """Every AI-tool line a run of `job` on `script` (a parsed Script) is planned to bill, priced."""
    from pipeline.metering.prices import PriceError

    book, at = _book(book), at or _now()
    lang = job.primary_language
    usage: list[tuple[str, str, dict[str, Any]]] = []  # (stage, backend, item)
    s = job.stages
    all_text = " ".join(line.text.get(lang) or next(iter(line.text.values()), "")
                        for shot in script.shots for line in shot.lines)
    seconds = [shot_seconds(shot, lang, s.dub) for shot in script.shots]

    def add(stage: str, facts_list: list[dict[str, Any]]) -> None:
        settings = backend_settings(job, stage)
        planner = backend_planner(SECTIONS[stage], settings.backend)
        if planner is None:
            return
        for facts in facts_list:
            for item in planner(dict(settings.options), **facts):
                usage.append((stage, settings.backend, item))

    add("script", [{"text": all_text, "lang": lang}])
    add("translate", [{"text": all_text, "lang": lang, "targets": job.languages[1:]}])
    from pipeline.series import SHEET_VIEWS, planned_sheets

    sheets = planned_sheets(job, script)  # the cast stage: one image per view of each new character sheet
    add("cast", [{"width": s.storyboard.width, "height": s.storyboard.height}] * (len(SHEET_VIEWS) * sheets))
    add("storyboard", [{"width": s.storyboard.width, "height": s.storyboard.height}] * len(seconds))
    add("video", [{"duration_s": d, "width": s.video.width, "height": s.video.height, "fps": s.video.fps}
                  for d in seconds])
    langs = s.dub.languages or job.languages
    add("dub", [{"text": line.text.get(g) or "", "lang": g} for shot in script.shots
                for line in shot.lines for g in langs])
    merged: dict[tuple[str, str, str, str], Decimal] = {}
    for stage, backend, item in usage:
        k = (stage, backend, item["tool"], item["unit"])
        merged[k] = merged.get(k, Decimal(0)) + Decimal(str(item["quantity"]))
    lines, problems = [], []
    for (stage, backend, tool, unit), qty in merged.items():
        try:
            price = book.price_for(tool, at)
        except PriceError as exc:
            problems.append(f"stages.{stage}: {exc}")
            continue
        lines.append(PlannedLine(stage, backend, tool, unit, qty, qty * price.price / Decimal(price.per),
                                 price.price, price.per, price.table_id, price.source))
    if problems:
        raise UserError(problems)
    total = exact_sum(line.amount for line in lines)
    minutes = Decimal(str(round(sum(seconds), 6))) / 60 if seconds else Decimal(0)
    return {"lines": lines, "total": total, "seconds": sum(seconds), "shots": len(seconds), "sheets": sheets,
            "per_minute": (total / minutes) if minutes else None}


def source_script(job: Any) -> Any:
    """The Script to plan from: the writer's screenplay, or for a treatment one shot per beat whose beat
    text stands in for its dialogue (a screenwriter's output is not known before it runs)."""
    from pipeline.script import Line, Scene, Script, Shot

    source = read_source(job)
    if hasattr(source, "shots"):
        return source
    lang = source.language or job.primary_language
    shots = tuple(Shot(id=f"s01-sh{i + 1:02d}", scene=1, index=i + 1, location="", action=beat,
                       lines=(Line(speaker="N", text={g: beat for g in job.languages} | {lang: beat}),))
                  for i, beat in enumerate(source.beats or (source.logline,)))
    return Script(title=source.title, language=lang, scenes=(Scene(number=1, heading="", location="", shots=shots),))


def for_job(job: Any, *, at: dt.datetime | None = None, book: Any = None) -> dict[str, Any]:
    """The planned AI-tool cost of one run of `job`, by stage: {"stages": {stage: Decimal}, "lines", ...}."""
    result = plan_episode(job, source_script(job), at=at, book=book)
    by_stage: dict[str, Decimal] = {}
    for line in result["lines"]:
        by_stage[line.stage] = by_stage.get(line.stage, Decimal(0)) + line.amount
    return {**result, "stages": by_stage}


def as_json(planned: dict[str, Any]) -> dict[str, Any]:
    """The plan for `microdrama estimate --json`: exact amounts as strings, the per-minute figure to the fen."""
    from pipeline.money import to_fen

    per_minute = planned.get("per_minute")
    return {"seconds": round(planned["seconds"], 3), "shots": planned["shots"],
            "ai_tools_cny": str(to_fen(planned["total"])), "ai_tools_exact_cny": str(planned["total"]),
            "ai_tools_per_finished_minute_cny": None if per_minute is None else str(to_fen(per_minute)),
            "lines": [{"stage": ln.stage, "backend": ln.backend, "item": ln.tool, "unit": ln.unit,
                       "quantity": str(ln.quantity), "rate": str(ln.rate), "per": ln.per, "amount": str(ln.amount),
                       "price_table": ln.table, "source": ln.source} for ln in planned["lines"]]}
