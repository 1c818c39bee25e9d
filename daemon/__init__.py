"""The hot-folder quality-gate daemon (``pyfundus watch``, ``pyfundusd``).

Every capture the camera writes goes: watchdog event (``watcher``) ->
debounce, stability check, cheap probe, sha256 (``intake``) -> pending row
in the ledger (``ledger``) -> bounded queue -> scorer thread, batched
(``scoring``) -> ledger commit -> verdict outputs (``sinks``: reject
actions first (``rejects``), then the CLI's lines, JSON sidecars, the
operator page and the alert hooks (``alerts``)).
``service.Daemon`` wires and supervises it all: a periodic reconcile scan is
the source of truth, a dead observer is restarted, SIGTERM drains.

Modules: ``config`` (flags and TOML), ``statedir`` (location, write check,
single-instance lock), ``logs`` (rotating log, redaction), ``filters``
(which paths count), ``probe`` (image? complete? hash), ``records`` (the
small types passed around), ``export`` (``pyfundus results export``),
``systemd`` (sd_notify; the unit file ``pyfundusd.service`` lies beside it),
``demo`` (``pyfundus demo``), ``bench`` (close-write to verdict latency),
``cli`` (the commands).
"""
