"""Scoring beyond one machine, on Ray: archive QC with Ray Data, central inference with Ray Serve.

``archive`` (``pyfundus score --engine ray``): a Ray Data pipeline that scores an archive with a pool of
actors, one loaded model each, into a folder of Parquet parts that a crash never corrupts and ``--resume``
continues. ``serve`` (``pyfundus serve --engine ray``): the scorer as a batched Ray Serve deployment over
HTTP, for cameras whose PCs are too weak to score in real time (``pyfundus watch --remote``, whose client is
``pyfundus.daemon.remote``). ``protocol``: what the two sides of that HTTP exchange agree on. ``parquet``: the
verdict record as Arrow columns. ``cluster``: starting or joining Ray.

Ray is an optional extra (``pip install "pyfundus[ray]"``) and is imported only here, only when used.
"""
