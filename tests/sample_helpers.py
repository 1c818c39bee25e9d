"""The real sample photos (pyfundus data fetch-samples) for tests: a skip locally, a failure in CI, when missing."""

from __future__ import annotations

from pathlib import Path

from conftest import skip_or_fail

from pyfundus.data.samples import sample_paths


def sample_photos() -> list[Path]:
    try:
        return sample_paths()
    except FileNotFoundError as exc:
        skip_or_fail(str(exc))
