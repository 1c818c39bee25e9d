"""The real sample photos (pyfundus data fetch-samples) for tests: a skip locally, a failure in CI, when missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyfundus.data.samples import sample_paths


def sample_photos() -> list[Path]:
    try:
        return sample_paths()
    except FileNotFoundError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI=true: the samples must be fetched in CI)", pytrace=False)
        pytest.skip(str(exc))
