"""The `fountain` script backend: the writer's own screenplay file is the script; no model is involved."""
from __future__ import annotations

from models import options as opt


class FountainScript:
    """Marker backend: the script stage parses the job's screenplay file as written."""

    Options = opt.BackendOptions  # no options
    reads_file = True
    resident = False
    num_gpus = 0

    def __init__(self, **options):
        if options:
            raise ValueError(f"stages.script.options: the fountain backend takes no options, got {sorted(options)}")
