"""Scoring beyond one machine, on Ray.

``archive`` (``pyfundus score --engine ray``): a Ray Data pipeline that scores an archive with a pool of
actors, one loaded model each, into a folder of Parquet parts that a crash never corrupts and ``--resume``
continues. ``parquet``: the verdict record as Arrow columns. ``cluster``: starting or joining Ray, and the
model each Ray worker loads. ``cli``: the command-line side.

Ray is an optional extra (``pip install "pyfundus[ray]"``) and is imported only here, only when used.
"""
