"""What every test file shares: the one rule for a missing prerequisite.

Locally a test whose prerequisite is missing (the sample photos, the export extra, Chromium,
the CUDA module) skips and says why. In CI (``CI=true``) .ci/run installs every prerequisite,
so a missing one is a broken CI setup and fails instead: a skip there would hide it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``; in CI, fail with it."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: CI must provide this)", pytrace=False)
    pytest.skip(reason)
