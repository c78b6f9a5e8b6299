"""The report as one page for a finance reader: per-episode summary, cost per finished minute, stage breakdown,
cash cost vs list value of free tools, cache savings, and bar charts whose labels always fit (HTML bars in a
table, no JavaScript, no external assets)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from html import escape
from typing import Any, Iterable

from pipeline.finance.attribution import LABELS
from pipeline.money import ZERO, shown

CSS = """
*{box-sizing:border-box}
body{font-family:"Noto Sans CJK SC","PingFang SC","Microsoft YaHei",sans-serif;margin:1.5em auto;max-width:1100px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ccc}
.muted{color:#666;font-size:.9em}
table{border-collapse:collapse;width:100%;font-size:.88em}
td,th{border:1px solid #ddd;padding:.3em .45em;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f4f4f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.num{text-align:right}td:first-child{white-space:nowrap}
@media (max-width:900px){table{font-size:.78em}td,th{padding:.25em .3em}.chart .label{width:9em}}
tr.total td{font-weight:bold;background:#fafafa}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:12em;flex:1}
.card .v{font-size:1.5em;font-weight:bold;font-variant-numeric:tabular-nums}
.chart td{border:none;padding:.2em .4em}.chart .label{width:14em;white-space:normal}
.chart .barcell{width:auto}.chart .value{width:9em;text-align:right;white-space:nowrap}
.bar{display:flex;height:1.1em;background:#f0f0f0;border-radius:3px;overflow:hidden}
.seg{height:100%}.final{background:#3b7dd8}.rework{background:#e39b2d}.idle{background:#9a9a9a}
.legend span{display:inline-block;margin-right:1.2em}.legend i{display:inline-block;width:.9em;height:.9em;
margin-right:.3em;vertical-align:-.1em}
"""


def _d(row: dict, key: str) -> Decimal:
    value = row.get(key)
    return Decimal(str(value)) if value not in (None, "") else ZERO


def _table(headers: list[str], rows: Iterable[list[Any]], numeric: set[int], total_last: bool = False) -> str:
    rows = list(rows)
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cls = ' class="total"' if total_last and n == len(rows) - 1 else ""
        body.append(f"<tr{cls}>" + "".join(f'<td{" class=num" if i in numeric else ""}>{escape(str(c))}</td>'
                                           for i, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _minutes(row: dict) -> str:
    return "" if row.get("duration_s") in (None, "") else f"{Decimal(str(row['duration_s'])) / 60:.2f}"


def _rework(row: dict) -> Decimal:
    return _d(row, "rework.superseded_cny") + _d(row, "rework.failed_cny") + _d(row, "rework.stopped_cny")


def _summary(totals: list[dict]) -> str:
    headers = ["episode", "minutes", "final cut", "rework", "idle", "production cost", "per minute",
               "reused from cache", "list value", "runs / lines"]
    rows = [[t["episode"], _minutes(t), shown(_d(t, "final_cny")), shown(_rework(t)), shown(_d(t, "idle_cny")),
             shown(_d(t, "cost.total_cny")),
             shown(_d(t, "cost_per_minute_cny")) if t.get("cost_per_minute_cny") else "—",
             shown(_d(t, "cache_savings_cny")), shown(_d(t, "cost.list_value_cny")),
             f"{t.get('runs', '')} / {t.get('lines', '')}"] for t in totals]
    if len(totals) > 1:
        s = {k: sum((_d(t, k) for t in totals), ZERO) for k in ("final_cny", "idle_cny", "cost.total_cny",
                                                                  "cache_savings_cny", "cost.list_value_cny")}
        rows.append(["drama total", "", shown(s["final_cny"]), shown(sum((_rework(t) for t in totals), ZERO)),
                     shown(s["idle_cny"]), shown(s["cost.total_cny"]), "", shown(s["cache_savings_cny"]),
                     shown(s["cost.list_value_cny"]), f"– / {sum(int(t.get('lines') or 0) for t in totals)}"])
    return ("<p class=muted>CNY. Minutes of finished episode; per minute = production cost ÷ minutes; list value = "
            "what the tools used would cost at list price (free tools are 0 in the cash cost).</p>"
            + _table(headers, rows, numeric=set(range(1, 10)), total_last=len(totals) > 1))


def _bar_chart(title: str, items: list[tuple[str, list[tuple[str, Decimal]]]]) -> str:
    """Horizontal stacked bars: one row per item (label, [(segment class, amount)]), widths relative to the top."""
    top = max((sum((v for _, v in segs), ZERO) for _, segs in items), default=ZERO)
    rows = []
    for label, segs in items:
        whole = sum((v for _, v in segs), ZERO)
        bar = "".join(f'<div class="seg {cls}" style="width:{float(v / top * 100) if top else 0:.2f}%" '
                      f'title="{escape(cls)} {shown(v)}"></div>' for cls, v in segs if v > 0)
        rows.append(f'<tr><td class="label">{escape(label)}</td><td class="barcell"><div class="bar">{bar}</div></td>'
                    f'<td class="value">{shown(whole)}</td></tr>')
    return (f'<figure><figcaption><b>{escape(title)}</b></figcaption><table class="chart">{"".join(rows)}</table>'
            "</figure>")


def _stages(episode: str, stage_rows: list[dict]) -> str:
    cost = sum((_d(r, "cost.total_cny") for r in stage_rows), ZERO)
    rows = [[r["stage"], r.get("backend", ""), _int(r.get("executions")), _int(r.get("cache_hits")),
             _num(r.get("wall_s")), _num(r.get("gpu_s")), shown(_d(r, "cost.total_cny")),
             f"{_d(r, 'cost.total_cny') / cost * 100:.1f}%" if cost else "—", shown(_d(r, "cost.list_value_cny"))]
            for r in stage_rows]
    return (f"<h3>{escape(episode)}</h3>"
            + _table(["stage", "backend", "executions", "cache hits", "wall s", "GPU s", "cost (CNY)", "share",
                      "list value"], rows, numeric={2, 3, 4, 5, 6, 7, 8}))


def _int(v: Any) -> str:
    return "" if v is None else str(int(v))


def _num(v: Any) -> str:
    return "" if v is None else f"{float(v):,.1f}"


def render_html(rows_: list[dict], title: str) -> str:
    """The whole page."""
    totals = [r for r in rows_ if r["stage"] == "TOTAL"]
    production = sum((_d(t, "cost.total_cny") for t in totals), ZERO)
    minutes = sum((Decimal(str(t["duration_s"])) / 60 for t in totals if t.get("duration_s")), ZERO)
    listed = sum((_d(t, "cost.list_value_cny") for t in totals), ZERO)
    cards = [("production cost", f"CNY {shown(production)}"), ("finished minutes", f"{minutes:.2f}"),
             ("per finished minute", f"CNY {shown(production / minutes)}" if minutes else "—"),
             ("reused from cache", f"CNY {shown(sum((_d(t, 'cache_savings_cny') for t in totals), ZERO))}"),
             ("cash cost vs list value", f"{shown(production)} / {shown(listed)}")]
    by_episode = _bar_chart("Production cost by episode (CNY): final cut, rework, idle",
                            [(t["episode"], [("final", _d(t, "final_cny")), ("rework", _rework(t)),
                                             ("idle", _d(t, "idle_cny"))]) for t in totals])
    stage_sum: dict[str, Decimal] = {}
    for r in rows_:
        if r["stage"] not in ("TOTAL", "REWORK", "IDLE"):
            stage_sum[r["stage"]] = stage_sum.get(r["stage"], ZERO) + _d(r, "cost.total_cny")
    by_stage = _bar_chart("Final-cut cost by stage, all episodes (CNY)",
                          [(s, [("final", v)]) for s, v in sorted(stage_sum.items(), key=lambda kv: -kv[1])])
    stages = "".join(_stages(t["episode"], [r for r in rows_ if r["episode"] == t["episode"]
                                            and r["stage"] not in ("TOTAL", "REWORK", "IDLE")])
                     for t in totals if any(r["episode"] == t["episode"] and r["stage"] not in
                                            ("TOTAL", "REWORK", "IDLE") for r in rows_))
    legend = ('<p class="legend"><span><i class="final"></i>final cut</span><span><i class="rework"></i>rework '
              '(superseded runs, failed attempts, runs that did not finish)</span><span><i class="idle"></i>idle '
              "rented nodes</span></p>")
    notes = ("<h2>How to read this</h2><ul>"
             + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in LABELS.items())
             + "<li>An output the final cut took from the cache counts once, at what the run that built it paid "
               "(\"reused from cache\").</li><li>Figures are rounded half-up to the fen; \"&lt; 0.01\" marks a cost "
               "under half a fen. The CSV/XLSX report and the ledger hold the exact amounts.</li></ul>")
    return ("<!DOCTYPE html><html lang=zh-CN><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width'><title>{escape(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{escape(title)}</h1><p class=muted>Generated {dt.date.today().isoformat()} from the "
            "ledger (money) and MLflow (usage). CNY.</p><div class=cards>"
            + "".join(f'<div class=card><div class=muted>{escape(k)}</div><div class=v>{escape(v)}</div></div>'
                      for k, v in cards)
            + "</div><h2>Per-episode summary</h2>" + _summary(totals) + legend + by_episode
            + "<h2>Stage breakdown</h2>" + by_stage + stages + notes + "</body></html>\n")
