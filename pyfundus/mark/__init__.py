"""``pyfundus mark``: the rater app that builds FQS-style datasets from a clinic's own captures.

``store`` (the SQLite state in DATASET/.pyfundus-mark/), ``aggregate`` (MOS, class vote, spread, disagreements;
no database), ``order`` (the order each rater sees the images in), ``importing`` (opinions from a CSV, captures
from the daemon's ledger), ``export`` (the FQS layout), ``server`` and ``page.html`` (the rating page), ``cli``.
"""
