"""The claim packet's HTML summary: one self-contained page (no scripts, no external assets) for finance."""
from __future__ import annotations

from html import escape
from typing import Any, Iterable

from pipeline.money import shown

_CSS = """
body{font-family:"Noto Sans CJK SC","PingFang SC","Microsoft YaHei",sans-serif;margin:2em auto;max-width:72em;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;font-size:.9em}td,th{border:1px solid #ddd;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}td{overflow-wrap:break-word}
.amount{font-size:1.8em;font-weight:bold}.warn{background:#fff4d6;border:1px solid #e0b040;padding:.5em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}code{font-size:.85em}.muted{color:#666}
"""


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{escape(str(c))}</td>'
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


DISTRICT_NAMES = {"huairou": "怀柔区", "yizhuang": "亦庄（北京经济技术开发区）", "tongzhou": "通州区（城市副中心）",
                  "mentougou": "门头沟区", "datong": "大同市"}


def written(value: Any) -> str:
    """A fact as a person writes it: 是/否 for flags, district names, lists joined with 、."""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, (list, tuple)):
        return "、".join(written(v) for v in value)
    if isinstance(value, str) and value in DISTRICT_NAMES:
        return f"{DISTRICT_NAMES[value]} ({value})"
    return str(value)


MONEY_FACTS = ("costs.", "revenue_share", "overseas_revenue", "rd_spend", "production_cost", "list_value")


def _money_fact(label: str, value: Any) -> str:
    """Money facts at the fen ("< 0.01" under half a fen; evidence.json keeps them exact), the rest as written."""
    if isinstance(value, (str, int)) and not isinstance(value, bool) and any(m in label for m in MONEY_FACTS):
        try:
            return shown(value)
        except ValueError:
            pass
    return written(value)


def _flat(facts: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in facts.items():
        if isinstance(value, dict) and value:
            rows += _flat(value, f"{prefix}{key}.")
        elif value not in (None, "", [], {}):
            label = f"{prefix}{key}"
            if key in DISTRICT_NAMES and prefix:
                label = f"{prefix}{DISTRICT_NAMES[key]}"
            rows.append((label, _money_fact(label, value)))
    return rows


def _facts(facts: dict[str, Any]) -> str:
    rows = _flat(facts)
    return _table(["fact", "value"], rows) if rows else "<p class=muted>none</p>"


def _header(claim: dict[str, Any]) -> str:
    policy = claim["policy"]
    who = claim["drama"] or "the company"
    draft = ('<p class=warn>This policy is a draft (征求意见稿): the amount is indicative until it is issued.</p>'
             if policy["status"] == "draft" else "")
    return (f"<h1>{escape(claim['title'])} <code>{escape(claim['programme'])}</code></h1>"
            f"<p>{escape(claim['company'])} · {claim['year']} · {escape(who)}</p>"
            f"<p class=amount>CNY {escape(claim['amount'])}</p>"
            "<p class=muted>The maximum eligible amount under the policy; the authority may grant less.</p>"
            f"{draft}<p>Policy: {escape(policy['title'])} (seed <code>{escape(policy['seed'])}</code>)</p>")


def _deadlines(evidence: dict[str, Any]) -> str:
    rows = [(d["id"], d["working_days"], f"{d['counted_from']} ({d['start'] or '?'})", d["not_counted"] or "-",
             d["due"], d["cite"]) for d in evidence["deadlines"]]
    if not rows:
        return ""
    return ("<h2>Deadlines (Chinese working days, 调休 observed)</h2>"
            + _table(["deadline", "working days", "counted from", "not counted", "last day", "clause"], rows))


def _shown(amount: Any) -> str:
    """A line amount as a person reads it: half-up to the fen, "< 0.01" under half a fen (evidence.json is exact)."""
    if amount in (None, ""):
        return ""
    try:
        return shown(amount)
    except ValueError:
        return str(amount)


def _costs(evidence: dict[str, Any]) -> str:
    rows = [(c.get("category", "final"), c["kind"], c["item"], c.get("stage", ""),
             _shown(c["amount"]), _shown(c.get("list_value")), c["ledger_index"], c["leaf_hash"][:12] + "…",
             len(c.get("inclusion_proof", [])), (c.get("mlflow_run_id") or "")[:12] or "(not in MLflow)")
            for c in evidence["cost_lines"]]
    labels = sorted({(c.get("category", "final"), c.get("category_label", "")) for c in evidence["cost_lines"]})
    legend = "; ".join(f"<b>{escape(k)}</b>: {escape(v)}" for k, v in labels if v)
    totals = _table(["field", "CNY"], [(k, _shown(v)) for k, v in evidence["cost_totals"].items()], numeric={1})
    table = _table(["category", "kind", "item", "stage", "amount", "list value", "ledger #", "leaf hash",
                    "proof nodes", "MLflow run"], rows, numeric={4, 5, 6, 8}) if rows else "<p class=muted>no cost lines</p>"
    return (f"<h2>Metered cost lines ({len(rows)} ledger entries)</h2>{totals}"
            "<p class=muted>Amounts are rounded half-up to the fen (\"&lt; 0.01\": under half a fen); evidence.json "
            f"has them exact, as the ledger holds them, with each entry, its leaf hash and inclusion proof.</p>"
            + (f"<p class=muted>{legend}</p>" if legend else "") + table)


def _verifier(public_key: str) -> str:
    key = (f"<p>Verifier key (signed-note vkey): <code>{escape(public_key)}</code> — compare it with the key the "
           "company registered before trusting the signature.</p>") if public_key else ""
    return (key + "<p class=muted>Each cost line in evidence.json carries its ledger entry (canonical JSON), leaf "
            "hash and inclusion proof against this checkpoint: check them with "
            "<code>pipeline.metering.ledger.verify_entry_inclusion</code>, or the whole ledger with "
            "<code>microdrama ledger verify</code>.</p>")


def render_summary(claim: dict[str, Any], evidence: dict[str, Any], digests: dict[str, str]) -> str:
    """The whole page: amount, deadlines, trace with seed clauses, cost lines, checkpoint, runs, facts."""
    trace = _table(["step", "what", "seed clause"],
                   [(s["kind"], (f"{s['drama']}: " if s["drama"] else "") + s["text"], f"{s['seed']} {s['clause']}")
                    for s in claim["trace_steps"]])
    runs = "".join(f"<li><code>{escape(r)}</code></li>" for r in evidence["mlflow_run_ids"]) or "<li>none</li>"
    checkpoint = escape(evidence["checkpoint"]) or "(none supplied)"
    files = _table(["file", "SHA-256"], digests.items())
    facts = evidence["declared_facts"]
    return (
        "<!DOCTYPE html><html lang=zh-CN><head><meta charset=utf-8>"
        f"<title>{escape(claim['programme'])} {escape(claim['drama'] or 'company')}</title>"
        f"<style>{_CSS}</style></head><body>"
        + _header(claim) + _deadlines(evidence)
        + f"<h2>How the amount was reached</h2>{trace}"
        + _costs(evidence)
        + f"<h2>Signed ledger checkpoint</h2><pre>{checkpoint}</pre>"
        + _verifier(evidence.get("public_key", ""))
        + f"<h2>MLflow runs</h2><ul>{runs}</ul>"
        + f"<h2>Declared facts</h2><h3>Drama</h3>{_facts(facts['drama'])}"
        + f"<h3>Company</h3>{_facts(facts['company'])}<h3>Supplied with the evidence</h3>{_facts(facts['supplied'])}"
        + f"<h2>Files in this packet</h2>{files}</body></html>\n")
