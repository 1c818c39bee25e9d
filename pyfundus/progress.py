"""One progress bar for every long job (scoring, building data, training, evaluation).

On a terminal it redraws smoothly; in a log file (a service, nohup, CI) it
still appears, but at most every 30 s, so long work is never silent.
"""

from __future__ import annotations

import sys


def progress_bar(total: int, *, desc: str | None = None, unit: str = "it", enabled: bool = True, initial: int = 0):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        mininterval=0.1 if interactive else 30.0,
        dynamic_ncols=interactive,
    )
