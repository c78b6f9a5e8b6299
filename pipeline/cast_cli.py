"""`microdrama cast`: the character sheets of a series — which exist, which a person approved — and approving one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False)


def sheets_of(job: Any) -> dict[str, dict[str, Any]]:
    """Each of the episode's characters with its sheet as the cast stage would find it in the cache now
    (status supplied / approved / generated, or `missing` before the first run), without running anything."""
    from pipeline import series as bible
    from pipeline.cache import Cache, digest
    from pipeline.orchestrate import code_version
    from pipeline.stages import StageCall
    from pipeline.stages.cast import CastStage
    from pipeline.stages.script import read_source

    series = bible.for_job(job)
    script = read_source(job)
    if not hasattr(script, "shots"):
        raise UserError("cast: the job's screenplay is a treatment; its characters are known once the script stage "
                        "ran — run the episode first")
    if series is not None:
        script = bible.apply(script, series)
    present = {n for s in script.shots for n in (*s.characters, *(ln.speaker for ln in s.lines))}
    approved = bible.approvals(series.path) if series is not None else {}
    cache_root = job.cache_dir if job.cache_dir.is_absolute() else (Path.cwd() / job.cache_dir).resolve()
    cache, stage = Cache(cache_root), CastStage(job)
    tag = {"series": series.series if series else f"{job.drama}/{job.episode}",
           "series_title": (series.title if series else "") or script.title}
    out: dict[str, dict[str, Any]] = {}
    for name, char in script.characters.items():
        if name not in present:
            continue
        if char.reference_images:
            images = {f"image{i + 1}": p for i, p in enumerate(char.reference_images)}
            out[name] = {"status": "supplied", "digest": bible.sheet_digest(images), "sheets": images}
            continue
        call = StageCall(f"cast:{name}", {"script": script, "character": name, **tag})
        entry = cache.get(digest(code_version(CastStage), *stage.cache_key_parts(call)))
        if entry is None:
            out[name] = {"status": "missing", "digest": None, "sheets": {}}
        else:
            out[name] = {"status": bible.status(char, entry["digest"], approved), "digest": entry["digest"],
                         "sheets": entry["sheets"]}
    return out


@app.command("status")
def status(job: Path = typer.Argument(..., help="An episode job of the series"),
           as_json: bool = typer.Option(False, "--json", help="JSON instead of lines")) -> None:
    """Each character of the episode: its sheet (files, digest) and whether a person approved it."""
    from pipeline.cli import _fail
    from pipeline.job import load_job
    from pipeline.screenplay import ScreenplayError

    try:
        found = sheets_of(load_job(job))
    except UserError as exc:
        _fail(exc, exc.exit_code)
    except ScreenplayError as exc:
        _fail(exc, 2)
    if as_json:
        typer.echo(json.dumps(found, ensure_ascii=False, indent=1))
        return
    for name, entry in found.items():
        files = "  ".join(f"{view}={path}" for view, path in entry["sheets"].items()) or "(run the episode to make it)"
        typer.echo(f"{name}\t{entry['status']}\t{entry['digest'] or '-'}\t{files}")


@app.command("approve")
def approve(series_file: Path = typer.Argument(..., metavar="SERIES.yaml", help="The series bible"),
            character: str = typer.Argument(..., help="The character (any of its names)"),
            digest: Optional[str] = typer.Option(None, "--digest", help="The sheet digest the run printed"),
            job: Optional[Path] = typer.Option(None, "--job", help="Approve the sheet this episode job uses now"),
            note: str = typer.Option("", "--note", help="A remark kept with the approval")) -> None:
    """Record a character's sheet as approved in the series' state (SERIES.approved.json beside the bible)."""
    from pipeline import series as bible
    from pipeline.cli import _fail
    from pipeline.job import load_job
    from pipeline.screenplay import ScreenplayError

    try:
        if (digest is None) == (job is None):
            raise UserError("cast approve: give exactly one of --digest DIGEST (from the run's message) or --job JOB")
        if job is not None:
            series, j = bible.load(series_file), load_job(job)
            if j.series is None or bible.locate(j)[0] != series.path:
                raise UserError(f"cast approve --job: {job} is not an episode of {series_file} (its series: is "
                                f"{j.series}); give a job of this series")
            name = series.find(character) or character
            entry = sheets_of(j).get(name)
            if entry is None or not entry["digest"]:
                raise UserError(f"cast approve --job: {job} has no sheet of {character!r} yet; run the episode "
                                "first (with cast.require_approval it stops right after making the sheets)")
            digest = entry["digest"]
        record = bible.approve(series_file, character, digest, note=note)
    except UserError as exc:
        _fail(exc, exc.exit_code)
    except ScreenplayError as exc:
        _fail(exc, 2)
    typer.echo(f"approved: {record['character']} {record['digest']}")
