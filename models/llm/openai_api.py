"""OpenAI-compatible chat-completions client (DeepSeek, Qwen/DashScope, vLLM…) and the `openai-api` script backend.

The API key is read from the environment variable named in the options at each request and is never
stored on the object, so it cannot show up in a repr, a pickled Ray argument, a log line or an error
(error texts are also scrubbed of it). Usage is metered from the response's `usage` block as
"<model>:input" / "<model>:output" tokens; a response without `usage` is an error, since the bill
could not be checked.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from models import options as opt
from models.llm import screenwriter
from models.registry import BackendResult
from pipeline import secrets
from pipeline.errors import UserError


class ApiError(RuntimeError):
    """The endpoint answered with an error or something that is not a chat completion."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    input_tokens: int
    output_tokens: int
    model: str


class ChatClient:
    """POST {base_url}/chat/completions with a bearer key from the environment (`api_key_env`) or a 0600
    secrets file (`secrets_file` + `api_key_name`), resolved through pipeline.secrets at each request (so a
    rotated key is picked up) and registered there, so it is masked in every log and error text."""

    def __init__(self, *, base_url: str, model: str, api_key_env: str = "", timeout_s: float = 120.0,
                 stage: str = "script", secrets_file: str | None = None, api_key_name: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"stages.{stage}.options.base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise UserError(f"stages.{stage}.options.model: name the model, e.g. deepseek-chat or qwen-plus")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.stage, self.timeout_s = stage, float(timeout_s)
        self.key_options = {k: v for k, v in {"api_key_env": api_key_env, "secrets_file": secrets_file,
                                              "api_key_name": api_key_name}.items() if v}
        self._key()  # fail at once, naming the option to fix

    def __repr__(self) -> str:
        where = f"secrets_file={self.key_options['secrets_file']!r}" if "secrets_file" in self.key_options \
            else f"api_key_env={self.api_key_env!r}"
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, {where})"

    def _key(self) -> str:
        return secrets.resolve(self.key_options, field=f"stages.{self.stage}.options")

    def _scrub(self, text: str) -> str:
        return secrets.redact(text)

    def _post(self, payload: dict) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(payload).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "Authorization": f"Bearer {self._key()}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                body = resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")[:500]
            raise ApiError(self._scrub(f"{self.model} at {self.base_url}: HTTP {err.code}: {detail}")) from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise ApiError(self._scrub(f"{self.model} at {self.base_url}: {err}")) from None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise ApiError(self._scrub(f"{self.model} at {self.base_url}: not JSON: {body[:200]!r}")) from None

    def chat(self, messages: list[dict[str, str]], *, temperature: float = 0.7, max_tokens: int = 2048,
             seed: int | None = None) -> ChatReply:
        payload: dict = {"model": self.model, "messages": messages, "temperature": temperature,
                         "max_tokens": max_tokens, "stream": False}
        if seed is not None:
            payload["seed"] = int(seed)
        data = self._post(payload)
        try:
            text = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ApiError(self._scrub(f"{self.model}: no choices[0].message.content in {str(data)[:200]}")) from None
        usage = data.get("usage") or {}
        if "prompt_tokens" not in usage or "completion_tokens" not in usage:
            raise ApiError(f"{self.model}: the response carries no usage (prompt/completion tokens); "
                           f"the call cannot be metered")
        return ChatReply(text, int(usage["prompt_tokens"]), int(usage["completion_tokens"]),
                         str(data.get("model") or self.model))


def token_usage(model: str, tokens_in: int, tokens_out: int) -> tuple[dict, ...]:
    """The ai_usage entries for one model's tokens (price-table keys "<model>:input" / "<model>:output")."""
    return ({"tool": f"{model}:input", "unit": "token", "quantity": tokens_in},
            {"tool": f"{model}:output", "unit": "token", "quantity": tokens_out})


class ChatOptions(opt.BackendOptions):
    """An OpenAI-compatible chat endpoint and where its key is."""

    base_url: opt.Url  # e.g. https://api.deepseek.com/v1
    model: opt.ModelId  # e.g. deepseek-chat or qwen-plus
    api_key_env: opt.EnvName = "OPENAI_API_KEY"
    secrets_file: opt.FilePath | None = None
    api_key_name: opt.EnvName | None = None
    temperature: float = opt.Field(0.8, ge=0, le=2)
    max_tokens: int = opt.Field(4096, ge=16, le=131_072)
    timeout_s: float = opt.Field(180.0, gt=0, le=3600)


class OpenAIScriptOptions(ChatOptions):
    repair: opt.Literal["skeleton", "reprompt", "none"] = "skeleton"


class OpenAIScript:
    """Writes the screenplay through an OpenAI-compatible chat API (validated, re-prompted, repaired).

    Options: ``base_url`` (e.g. https://api.deepseek.com/v1), ``model`` (e.g. deepseek-chat),
    ``api_key_env`` (name of the env var with the key) or ``secrets_file`` + ``api_key_name`` (a mode-600
    NAME=value file), ``temperature``, ``max_tokens``, ``timeout_s``, ``repair`` (skeleton|reprompt|none).
    """

    Options = OpenAIScriptOptions
    resident = False  # nothing to keep loaded: an HTTP client
    num_gpus = 0

    def __init__(self, *, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.8, max_tokens: int = 4096, timeout_s: float = 180.0,
                 repair: str = "skeleton", secrets_file: str | None = None,
                 api_key_name: str | None = None) -> None:
        if repair not in screenwriter.REPAIRS:
            raise ValueError(f"stages.script.options.repair must be one of {', '.join(screenwriter.REPAIRS)}")
        self.client = ChatClient(base_url=base_url, model=model, api_key_env=api_key_env, timeout_s=timeout_s,
                                 secrets_file=secrets_file, api_key_name=api_key_name)
        self.temperature, self.max_tokens, self.repair = temperature, max_tokens, repair

    def __repr__(self) -> str:
        return f"OpenAIScript({self.client!r})"

    @staticmethod
    def planned(options: dict, *, text: str, lang: str, **_: object) -> list[dict]:
        """Planned tokens of one screenplay: the prompt (~1,500 tokens + the treatment) in, the screenplay
        (about three times its dialogue, in tokens) out."""
        from pipeline.finance.plan import tokens

        spoken = tokens(text, lang)
        return list(token_usage(options.get("model", ""), 1500 + spoken, 3 * spoken + 200))

    def write(self, *, logline: str, beats: list[str], language: str, seed: int) -> BackendResult:
        tokens = [0, 0]

        def generate(messages: list[dict[str, str]]) -> str:
            reply = self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed)
            tokens[0] += reply.input_tokens
            tokens[1] += reply.output_tokens
            return reply.text

        try:
            text, params = screenwriter.write_screenplay(generate, logline=logline, beats=list(beats),
                                                         language=language, repair=self.repair)
        except screenwriter.ScreenwriterError as err:  # the tokens were spent: say so in the error
            raise screenwriter.ScreenwriterError(f"{err} [{tokens[0]} input + {tokens[1]} output tokens "
                                                 f"of {self.client.model} spent]") from None
        return BackendResult(outputs={"screenplay": text}, ai_usage=token_usage(self.client.model, *tokens),
                             params={**params, "model": self.client.model, "base_url": self.client.base_url,
                                     "tokens_in": tokens[0], "tokens_out": tokens[1], "seed": seed})
