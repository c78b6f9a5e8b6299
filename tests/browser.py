"""Render a page in headless Debian chromium (installed by `make system-deps`) and measure it after layout."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  const root = document.documentElement, clipped = [];
  for (const el of document.querySelectorAll('td, th, figcaption, h1, h2, h3, .card, text')) {
    if (el.scrollWidth > el.clientWidth + 1) clipped.push((el.className || el.tagName) + ': ' + el.textContent.slice(0, 40));
  }
  for (const el of document.querySelectorAll('td, th')) {  // a word broken over lines is unreadable too
    const text = el.textContent.trim();
    if (!text || /\s/.test(text)) continue;
    const range = document.createRange(); range.selectNodeContents(el);
    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (tops.size > 1) clipped.push('broken: ' + text.slice(0, 40));
  }
  const out = {viewport: window.innerWidth, scroll_width: root.scrollWidth, clipped: clipped,
               tables: document.querySelectorAll('table').length, bars: document.querySelectorAll('.seg').length};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian chromium is missing: run `make system-deps`"
    return found


def measure(page: Path, width: int = 1280, height: int = 900) -> tuple[dict, Path]:
    """Layout facts of `page` at `width` px (scroll width, clipped cells, ...) and a screenshot of it."""
    work = Path(tempfile.mkdtemp(prefix="chromium-"))
    probe = work / page.name
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    base = [chromium(), *FLAGS, f"--user-data-dir={work / 'profile'}", f"--window-size={width},{height}"]
    dom = subprocess.run([*base, "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, f"chromium rendered no probe: {dom[:500]}"
    shot = work / "page.png"
    subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    facts = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                       .replace("&gt;", ">"))
    return facts, shot
