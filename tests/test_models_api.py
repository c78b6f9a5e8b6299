"""OpenAI-compatible client and API backends against a local chat-completions server started in the test."""
from __future__ import annotations

import json
import logging
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models.registry import resolve

KEY = "sk-test-3f9c0d7e1b2a4c5d"
SCREENPLAY = """Title: The Stand-in
Language: en
Characters:
    LIN | voice=f
    GU | voice=m

INT. OFFICE - NIGHT

[[shot: close, push-in]]
A contract slaps onto the desk.

GU
Sign it.
"""


class ChatServer(ThreadingHTTPServer):
    """Speaks POST /v1/chat/completions; answers come from a queue of (status, content) pairs."""

    def __init__(self, answers: list[tuple[int, str]]):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.answers, self.requests = list(answers), []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, content = self.server.answers.pop(0)
        if status != 200:
            payload = {"error": {"message": f"invalid key {self.headers.get('Authorization')}"}}
        else:
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
            payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                                 "total_tokens": 0}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat_server(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    servers = []

    def start(answers: list[tuple[int, str]]) -> ChatServer:
        server = ChatServer(answers)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _options(server: ChatServer) -> dict:
    return {"base_url": server.base_url, "model": "deepseek-chat", "api_key_env": "TEST_LLM_KEY"}


def test_openai_script_meters_tokens_and_reprompts(chat_server):
    server = chat_server([(200, "Here you go: a story without format."), (200, f"```\n{SCREENPLAY}```")])
    backend = resolve("script", "openai-api")(**_options(server))
    r = backend.write(logline="The Stand-in", beats=["Office."], language="en", seed=3)
    assert "GU\nSign it." in r.outputs["screenplay"] and r.params["repair"] == "reprompt"
    assert [req["path"] for req in server.requests] == ["/v1/chat/completions"] * 2
    assert all(req["auth"] == f"Bearer {KEY}" for req in server.requests)
    assert server.requests[0]["body"]["model"] == "deepseek-chat" and server.requests[0]["body"]["seed"] == 3
    assert server.requests[1]["body"]["messages"][-1]["content"].startswith("That screenplay does not parse")
    usage = {u["tool"]: u for u in r.ai_usage}
    assert set(usage) == {"deepseek-chat:input", "deepseek-chat:output"}
    assert usage["deepseek-chat:input"]["unit"] == "token" and usage["deepseek-chat:input"]["quantity"] == (
        r.params["tokens_in"]) > 0
    assert usage["deepseek-chat:output"]["quantity"] == 7 + len(f"```\n{SCREENPLAY}```".split())


def test_api_key_never_in_repr_pickle_logs_or_errors(chat_server, caplog):
    server = chat_server([(401, ""), (200, "no usage here")])
    backend = resolve("script", "openai-api")(**_options(server))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as err:
        backend.write(logline="x", beats=[], language="en", seed=1)
    assert "HTTP 401" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)
    assert KEY not in repr(backend) and KEY not in repr(backend.client) and KEY not in str(vars(backend.client))
    assert KEY.encode() not in pickle.dumps(backend)
    assert KEY not in caplog.text


def test_missing_usage_or_key_is_an_error(chat_server, monkeypatch):
    from models.llm.openai_api import ApiError, ChatClient

    server = chat_server([])
    client = ChatClient(**_options(server))
    server.answers.append((200, "hello"))
    assert client.chat([{"role": "user", "content": "hi there"}]).output_tokens == 1

    def no_usage(self, payload):
        return {"choices": [{"message": {"content": "hi"}}]}

    monkeypatch.setattr(ChatClient, "_post", no_usage)
    with pytest.raises(ApiError, match="no usage"):
        client.chat([{"role": "user", "content": "hi"}])
    monkeypatch.delenv("TEST_LLM_KEY")
    with pytest.raises(Exception, match="TEST_LLM_KEY"):
        resolve("translate", "llm-api")(**_options(server))


def test_llm_api_translation_with_glossary_in_prompt(chat_server):
    server = chat_server([(200, "Sorry, here: [\"Sign it.\"]"),
                          (200, '["Sign it.", "Lin Xiao, who are you?"]')])
    backend = resolve("translate", "llm-api")(**_options(server))
    r = backend.translate(["签了它。", "林晓，你是谁？"], src="zh", tgt="en", glossary={"林晓": "Lin Xiao"})
    assert r.outputs["texts"] == ["Sign it.", "Lin Xiao, who are you?"] and r.params["glossary_misses"] == 0
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert "林晓 → Lin Xiao" in system
    assert "expected 2 translations, got 1" in server.requests[1]["body"]["messages"][-1]["content"]
    assert {u["tool"] for u in r.ai_usage} == {"deepseek-chat:input", "deepseek-chat:output"}


def test_key_from_a_private_secrets_file(chat_server, tmp_path, monkeypatch):
    """The real client takes its key from a mode-600 secrets file as well as from the environment."""
    from pipeline.secrets import SecretError

    monkeypatch.delenv("TEST_LLM_KEY")
    file_key = "sk-file-" + "9" * 24
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"# keys\nexport DEEPSEEK_API_KEY='{file_key}'\n")
    secrets_file.chmod(0o600)
    server = chat_server([(200, f"```\n{SCREENPLAY}```")])
    options = {"base_url": server.base_url, "model": "deepseek-chat", "secrets_file": str(secrets_file),
               "api_key_name": "DEEPSEEK_API_KEY"}
    backend = resolve("script", "openai-api")(**options)
    backend.write(logline="The Stand-in", beats=["Office."], language="en", seed=3)
    assert server.requests[0]["auth"] == f"Bearer {file_key}"
    assert file_key not in repr(backend) and file_key.encode() not in pickle.dumps(backend)

    secrets_file.chmod(0o644)  # readable by others: refused, naming the option, never echoing the key
    with pytest.raises(SecretError, match=r"stages\.translate\.options\.secrets_file.*chmod 600") as err:
        resolve("translate", "llm-api")(**options)
    assert file_key not in str(err.value)
