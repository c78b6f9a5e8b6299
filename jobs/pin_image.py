"""Pin the KubeRay manifests to pushed image digests: `python -m jobs.pin_image REF@sha256:… [REF@sha256:…]`.

Each argument is an image reference with its digest (what `docker push` or `crane digest` prints), e.g.
`registry.example.com/microdrama:0.1.0@sha256:9f…`. Every `image:` line in jobs/kuberay/*.yaml whose repository
has the same last path part (`microdrama`, `microdrama-driver`) is rewritten to it, comments and anchors kept.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

MANIFESTS = sorted((Path(__file__).resolve().parent / "kuberay").glob("*.yaml"))
REF = re.compile(r"(?P<repo>[\w.\-/:]+?/(?P<name>[\w.\-]+)):(?P<tag>[\w.\-]+)@sha256:(?P<digest>[0-9a-f]{64})")
IMAGE_LINE = re.compile(r"(?P<lead>\bimage:\s+(?:&[\w-]+\s+)?)(?P<ref>\S+)")


def parse(ref: str) -> re.Match[str]:
    found = REF.fullmatch(ref)
    if found is None:
        raise ValueError(f"{ref!r}: expected REGISTRY/NAME:TAG@sha256:<64 hex digits>")
    return found


def pin(text: str, refs: dict[str, str]) -> tuple[str, int]:
    """`text` with every image of a pinned name replaced; and how many lines changed."""
    count = 0

    def swap(line: re.Match[str]) -> str:
        nonlocal count
        current = REF.fullmatch(line["ref"]) or re.fullmatch(r"(?P<repo>.+/(?P<name>[\w.\-]+))(?::[\w.\-]+)?",
                                                              line["ref"])
        if current is None or current["name"] not in refs:
            return line.group(0)
        count += 1
        return line["lead"] + refs[current["name"]]

    return IMAGE_LINE.sub(swap, text), count


def main(argv: list[str]) -> int:
    try:
        refs = {parse(a)["name"]: a for a in argv}
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not refs:
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    for path in MANIFESTS:
        text, count = pin(path.read_text("utf-8"), refs)
        path.write_text(text, "utf-8")
        print(f"{path.name}: {count} image line(s) pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
