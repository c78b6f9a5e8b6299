"""The repository stands on its own: README, docs, CLI help, notebooks and config comments point only at files
inside it (no `../shared`, no dead relative links), and money code (finance, metering) imports no media code."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # markdown [text](target)
BACKTICK_PATH = re.compile(r"`((?:\.\./|docs/|configs/|notebooks/|pipeline/|tests/|jobs/|bench/|models/)[^`\s*<>]+)`")
OUTSIDE = re.compile(r"\.\./shared|(?<![\w/.])shared/(?:seeds|CLAIMS|POLICIES|DESIGN|STYLE)")


def _texts() -> dict[Path, str]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "configs").rglob("*.yaml")),
             *sorted((ROOT / "pipeline").rglob("*.py"))]
    texts = {p: p.read_text(encoding="utf-8") for p in paths}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        texts[nb] = "\n".join("".join(c["source"]) for c in cells)
    return texts


def test_nothing_points_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in _texts().items() for m in OUTSIDE.finditer(text)]
    assert not found, found


def test_relative_links_and_named_paths_resolve():
    dead = []
    for path, text in _texts().items():
        if path.suffix not in (".md", ".ipynb"):
            continue
        for target in LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                dead.append(f"{path.relative_to(ROOT)}: ({target})")
        for target in BACKTICK_PATH.findall(text):
            target = target.rstrip(".,:;")
            base = path.parent if target.startswith("../") else ROOT
            if "{" not in target and not (base / target).exists() and not any(ch in target for ch in "*?"):
                dead.append(f"{path.relative_to(ROOT)}: `{target}`")
    assert not dead, dead


def test_cli_help_points_inside_the_repository():
    from tests.tiny_jobs import cli

    for args in (["--help"], ["claims", "--help"], ["claims", "evaluate", "--help"], ["claims", "build", "--help"],
                 ["claims", "packet", "--help"], ["report", "--help"], ["estimate", "--help"]):
        out = cli(*args).output
        assert not OUTSIDE.search(out), (args, out)


MEDIA = ("pipeline.stages", "pipeline.runner", "pipeline.episode", "pipeline.orchestrate", "models")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_money_code_imports_no_media_code():
    bad = []
    for folder in ("finance", "metering"):
        for path in sorted((ROOT / "pipeline" / folder).glob("*.py")):
            bad += [f"{path.relative_to(ROOT)} imports {name}" for name in _imports(path)
                    if any(name == m or name.startswith(m + ".") for m in MEDIA)]
    assert not bad, bad
