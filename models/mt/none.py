"""Translate backend "none": no machine translation; dubbing uses the screenplay's own translations."""
from __future__ import annotations

from models import options as opt
from models.registry import BackendResult


class NoTranslation:
    """Passes texts through when source and target language are the same, and refuses otherwise."""

    Options = opt.BackendOptions  # no options
    resident = False
    machine_translates = False  # a language the screenplay lacks cannot be supplied (validate says so)

    def translate(self, texts: list[str], *, src: str, tgt: str,
                  glossary: dict[str, str]) -> BackendResult:
        if same_language(src, tgt):
            return BackendResult(outputs={"texts": list(texts)}, params={"src": src, "tgt": tgt})
        raise ValueError(
            f"translate none: cannot translate {len(texts)} line(s) from {src!r} to {tgt!r}: the {tgt!r} text is "
            f"missing and this backend does not machine-translate; add [[{tgt}: …]] translations to the "
            f"screenplay or pick a translate backend, e.g. profile tiny/api"
        )


def same_language(a: str, b: str) -> bool:
    """'zh' matches 'zh-CN' (a bare language matches its regional tags); 'zh-CN' does not match 'zh-TW'."""
    a, b = (tag.strip().lower().replace("_", "-") for tag in (a, b))
    return a == b or a == b.split("-")[0] or b == a.split("-")[0]
