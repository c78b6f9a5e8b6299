"""Rich progress per stage and shot while Ray works (silent with --quiet); failures surface as StageFailed.

One bar per stage counts its executions; for the per-shot stages the bar also shows one mark per shot, in
screenplay order: `·` waiting or running, `■` rendered, `□` served from the cache, `!` done after a retry."""
from __future__ import annotations

from typing import Any

import ray
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from pipeline import stopping

WAITING, DONE, CACHED, RETRIED = "·", "■", "□", "!"


class Progress:
    def __init__(self, *, quiet: bool = False, title: str = "", console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.bar = None if quiet else RichProgress(
            TextColumn(f"[bold]{escape(title)}[/] {{task.description:<11}}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=self.console, transient=False)

    def __enter__(self) -> "Progress":
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def wait(self, stage: str, refs: list[ray.ObjectRef], shots: list[str] | None = None) -> list[dict[str, Any]]:
        """Block until every ref is done, updating the stage's bar (and its shot marks when `shots` names the
        shot of each ref); results come back in ref order."""
        marks = [WAITING] * len(refs) if shots else []
        task = self.bar.add_task(stage, total=len(refs), note=self._note(marks, 0, 0, "")) if self.bar else None
        position = {ref: i for i, ref in enumerate(refs)}
        pending, hits, retried = list(refs), 0, 0
        while pending:
            stopping.check()  # `ray job stop` / SIGTERM: stop waiting, the runner cancels and bills
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            if not ready:
                continue
            result = ray.get(ready[0])
            hits += bool(result.get("cache_hit"))
            again = int(result.get("attempts") or 1) > 1
            retried += again
            last = ""
            if marks:
                i = position[ready[0]]
                marks[i] = RETRIED if again else CACHED if result.get("cache_hit") else DONE
                last = shots[i]
            if self.bar:
                self.bar.update(task, advance=1, note=self._note(marks, hits, retried, last))
        return ray.get(refs)

    @staticmethod
    def _note(marks: list[str], hits: int, retried: int, last: str) -> str:
        parts = ["".join(marks)] if marks else []
        parts += [f"cached {hits}"] if hits else []
        parts += [f"retried {retried}"] if retried else []
        parts += [escape(last)] if last else []
        return "  ".join(parts)
