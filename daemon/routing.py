"""One daemon, several cameras: each capture is scored by its camera's model.

A site that adapted the gate to a camera (``pyfundus adapt``) maps that camera to its site model,
by camera key (DICOM Manufacturer + ManufacturerModelName, or EXIF Make + Model; see
``pyfundus.io.camera_key``) or by the sub-folder the camera writes into (for cameras whose files
say nothing about them). Everything else goes to the default model. Sub-folder rules win over
camera rules (they are what the site set up by hand), and the longest matching sub-folder wins.

The router is itself a scorer (``score(paths, batch_size=...)``), so the scoring worker does not
know there are several models: it batches by model and each result records the model (name and
sha256) that scored it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

from pyfundus.io import FundusImage, peek_camera, source_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where a rule sends captures: ``kind`` is "camera" or "folder", ``key`` the camera key or sub-folder."""

    kind: str
    key: str
    model: Any


class ModelRouter:
    """Scores each capture with the model its camera or sub-folder is mapped to (the default otherwise)."""

    def __init__(self, default: Any, routes: Sequence[Route], root: str) -> None:
        self.default = default
        self.root = root
        self._cameras = {r.key: r.model for r in routes if r.kind == "camera"}
        # Longest first, so "room2/left" wins over "room2".
        self._folders = sorted(((r.key.strip("/"), r.model) for r in routes if r.kind == "folder"),
                               key=lambda pair: -len(pair[0]))  # fmt: skip

    # The default model speaks for the router where one model is asked about (status, health, start-up).
    @property
    def name(self) -> str:
        return self.default.name

    @property
    def trained(self) -> bool:
        return all(getattr(model, "trained", True) for model in self.models)

    @property
    def backend_description(self) -> str:
        return getattr(self.default, "backend_description", type(self.default).__name__)

    @property
    def input(self) -> Any:
        """The default model's input contract (heavy captures are decoded for it)."""
        return getattr(self.default, "input", None)

    @property
    def models(self) -> list[Any]:
        """Every distinct model, the default first."""
        seen = [self.default]
        for model in [*self._cameras.values(), *(m for _, m in self._folders)]:
            if all(model is not other for other in seen):
                seen.append(model)
        return seen

    @property
    def rules(self) -> list[tuple[str, str, Any]]:
        """(kind, key, model) of every rule, sub-folders first (they win over cameras)."""
        return [("folder", key, model) for key, model in self._folders] + [
            ("camera", key, model) for key, model in self._cameras.items()
        ]

    @property
    def mapped_cameras(self) -> set[str]:
        """Camera keys that have a model of their own."""
        return set(self._cameras)

    def model_for(self, capture: str | FundusImage) -> Any:
        """The model for a capture: a path, or an image already decoded (which knows its camera)."""
        path = source_name(capture) or ""
        relative = os.path.relpath(path, self.root).replace(os.sep, "/") if path else ""
        for folder, model in self._folders:
            if relative == folder or relative.startswith(folder + "/"):
                return model
        if self._cameras:
            camera = capture.camera if isinstance(capture, FundusImage) else peek_camera(path)
            return self._cameras.get(camera, self.default)
        return self.default

    def score(self, inputs: Sequence[str | FundusImage], *, batch_size: int = 8) -> list[Any]:
        groups: dict[int, tuple[Any, list[int]]] = {}
        for i, capture in enumerate(inputs):
            model = self.model_for(capture)
            groups.setdefault(id(model), (model, []))[1].append(i)
        results: list[Any] = [None] * len(inputs)
        for model, indices in groups.values():
            for i, result in zip(indices, model.score([inputs[i] for i in indices], batch_size=batch_size)):
                results[i] = result
        return results


def describe_routes(routes: Sequence[Route]) -> list[str]:
    """One line per rule for the start-up log and terminal: which captures go to which model."""
    return [f"{r.kind} {r.key!r} -> {getattr(r.model, 'name', r.model)}" for r in routes]
