"""The hot-folder quality-gate daemon (``pyfundus watch``, ``pyfundusd``).

Every capture the camera writes goes: watchdog event (``watcher``) ->
debounce, stability check, cheap probe, sha256 (``intake``) -> pending row
in the ledger (``ledger``) -> bounded queue -> scorer thread, batched
(``scoring``) -> ledger commit -> verdict outputs (``sinks``: the CLI's
lines, JSON sidecars; the operator page and alert hooks plug in here).
``service.Daemon`` wires and supervises it all: a periodic reconcile scan is
the source of truth, a dead observer is restarted, SIGTERM drains.

Modules: ``config`` (flags and TOML), ``statedir`` (location, write check,
single-instance lock), ``logs`` (rotating log, redaction), ``filters``
(which paths count), ``probe`` (image? complete? hash), ``records`` (the
small types passed around), ``export`` (``pyfundus results export``),
``cli`` (the commands).
"""
