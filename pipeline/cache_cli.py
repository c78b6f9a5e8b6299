"""`microdrama cache verify [--repair]`: checks every entry of the stage cache against its SHA-256 digests."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The stage cache: verify every entry, remove the bad ones.", no_args_is_help=True)


@app.command()
def verify(cache_dir: Optional[Path] = typer.Option(
               None, "--cache-dir", help="The cache folder (default: the job's cache_dir, else .cache/microdrama "
                                         "in $MICRODRAMA_STATE_DIR or the current directory)"),
           job: Optional[Path] = typer.Option(None, "--job", help="Take cache_dir from this episode job"),
           repair: bool = typer.Option(False, "--repair", help="Remove the bad entries: their stages re-render "
                                                               "on the next run")) -> None:
    """Recompute every entry's file digests; one line per bad entry, exit 1 if any (0: the cache is sound)."""
    from pipeline import state
    from pipeline.cache import Cache
    from pipeline.errors import UserError

    if cache_dir is None and job is not None:
        from pipeline.job import load_job

        try:
            cache_dir = load_job(job).cache_dir
        except UserError as exc:
            for line in str(exc).splitlines():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2) from None
    root = Path(cache_dir) if cache_dir is not None else state.state_path(state.CACHE_DIR)
    if not root.is_dir():
        typer.echo(f"error: --cache-dir: {root} is not a folder; give the cache_dir of your jobs", err=True)
        raise typer.Exit(2)
    cache = Cache(root)
    total = sum(1 for _ in cache.keys())
    bad = 0
    for key, problem in cache.verify():
        bad += 1
        if repair:
            cache.remove(key)
        typer.echo(f"{'removed' if repair else 'bad'}: {key[:2]}/{key}: {problem}")
    if bad and not repair:
        typer.echo(f"{bad} of {total} entries bad in {cache.root}; `microdrama cache verify --repair` removes "
                   "them (their stages re-render on the next run)", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {total - bad} entries verified in {cache.root}" + (f", {bad} removed" if bad else ""))
