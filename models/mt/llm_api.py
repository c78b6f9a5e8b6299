"""Translation backend `llm-api`: an OpenAI-compatible chat model translates the lines, glossary in the prompt.

Lines go out as a JSON array and must come back as a JSON array of the same length; a malformed answer
is re-asked once, then rejected. Glossary names the model did not use are counted in params
(`glossary_misses`) — and, with ``enforce_glossary``, re-asked once with the misses named.
"""
from __future__ import annotations

import json
import re

from models import options as opt
from models.llm.openai_api import ApiError, ChatClient, ChatOptions, token_usage
from models.mt import glossary as gl
from models.registry import BackendResult

LANG_NAMES = {"zh": "Simplified Chinese", "zh-Hant": "Traditional Chinese", "en": "English", "ja": "Japanese",
              "ko": "Korean", "fr": "French", "es": "Spanish", "de": "German", "pt": "Portuguese", "th": "Thai",
              "vi": "Vietnamese", "id": "Indonesian", "ms": "Malay", "ru": "Russian", "ar": "Arabic"}


def prompt(texts: list[str], src: str, tgt: str, glossary: dict[str, str]) -> list[dict[str, str]]:
    names = "\n".join(f"- {a} → {b}" for a, b in glossary.items()) or "(none)"
    system = ("You translate short-drama dialogue for subtitles and dubbing: natural, spoken, concise, "
              "keeping tone and emotion. Always write these names exactly as given:\n" + names +
              "\nAnswer with a JSON array of strings only: one translation per input line, same order.")
    user = (f"Translate from {LANG_NAMES.get(src, src)} to {LANG_NAMES.get(tgt, tgt)}:\n"
            + json.dumps(texts, ensure_ascii=False))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_array(text: str, n: int) -> list[str] | str:
    """The JSON array of n strings in `text` (fences allowed), or an error message."""
    m = re.search(r"\[.*\]", text, flags=re.S)
    if not m:
        return "no JSON array in the answer"
    try:
        items = json.loads(m.group(0))
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err}"
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        return "the array must hold strings only"
    if len(items) != n:
        return f"expected {n} translations, got {len(items)}"
    return [x.strip() for x in items]


class LLMApiTranslateOptions(ChatOptions):
    temperature: float = opt.Field(0.2, ge=0, le=2)
    timeout_s: float = opt.Field(120.0, gt=0, le=3600)
    batch_size: int = opt.Field(40, ge=1, le=1000)  # lines per request
    enforce_glossary: bool = True


class LLMApiTranslate:
    """Options: ``base_url``, ``model``, ``api_key_env`` (or ``secrets_file`` + ``api_key_name``), ``temperature``, ``max_tokens``, ``timeout_s``,
    ``batch_size`` (lines per request), ``enforce_glossary``."""

    Options = LLMApiTranslateOptions
    resident = False
    num_gpus = 0

    def __init__(self, *, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.2,
                 max_tokens: int = 4096, timeout_s: float = 120.0, batch_size: int = 40,
                 enforce_glossary: bool = True, secrets_file: str | None = None,
                 api_key_name: str | None = None) -> None:
        self.client = ChatClient(base_url=base_url, model=model, api_key_env=api_key_env, timeout_s=timeout_s,
                                 stage="translate", secrets_file=secrets_file, api_key_name=api_key_name)
        self.temperature, self.max_tokens = temperature, max_tokens
        self.batch_size, self.enforce_glossary = max(1, int(batch_size)), enforce_glossary

    def __repr__(self) -> str:
        return f"LLMApiTranslate({self.client!r})"

    @staticmethod
    def planned(options: dict, *, text: str, lang: str, targets: list[str] = (), **_: object) -> list[dict]:
        """Planned tokens: per target language the lines in (+ ~250 tokens of prompt) and about as many out."""
        from pipeline.finance.plan import tokens

        if not targets:
            return []
        n = tokens(text, lang)
        return list(token_usage(options.get("model", ""), len(targets) * (250 + n), len(targets) * (n + 20)))

    def _ask(self, messages: list[dict[str, str]], tokens: list[int]) -> str:
        reply = self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens)
        tokens[0] += reply.input_tokens
        tokens[1] += reply.output_tokens
        return reply.text

    def _batch(self, texts: list[str], src: str, tgt: str, glossary: dict[str, str], tokens: list[int]) -> list[str]:
        messages = prompt(texts, src, tgt, glossary)
        answer = self._ask(messages, tokens)
        result = parse_array(answer, len(texts))
        if isinstance(result, str):
            retry = messages + [{"role": "assistant", "content": answer[:4000]},
                                {"role": "user", "content": f"{result}. Answer again with exactly {len(texts)} "
                                                            f"strings in one JSON array, nothing else."}]
            answer = self._ask(retry, tokens)
            result = parse_array(answer, len(texts))
            if isinstance(result, str):
                raise ApiError(f"translate llm-api ({self.client.model}): {result} after a retry")
        if self.enforce_glossary and gl.misses(texts, result, glossary):
            fix = messages + [{"role": "assistant", "content": json.dumps(result, ensure_ascii=False)},
                              {"role": "user", "content": "Some names are not written as the glossary says. "
                                                          "Fix them; same JSON array format."}]
            again = parse_array(self._ask(fix, tokens), len(texts))
            if not isinstance(again, str) and gl.misses(texts, again, glossary) < gl.misses(texts, result, glossary):
                result = again
        return result

    def translate(self, texts: list[str], *, src: str, tgt: str, glossary: dict[str, str]) -> BackendResult:
        tokens = [0, 0]
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            out += self._batch(texts[i:i + self.batch_size], src, tgt, glossary, tokens)
        return BackendResult(outputs={"texts": out}, ai_usage=token_usage(self.client.model, *tokens),
                             params={"model": self.client.model, "src": src, "tgt": tgt, "lines": len(texts),
                                     "glossary_misses": gl.misses(texts, out, glossary),
                                     "tokens_in": tokens[0], "tokens_out": tokens[1]})
