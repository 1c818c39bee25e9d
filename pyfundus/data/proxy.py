"""The FQS-proxy builder: degraded real and synthetic fundi with a proxy MOS, in the FQS layout.

No fundus-quality dataset with opinion scores can be had here, so the training
target is derived from what we control: how strongly each image was degraded.

Proxy MOS (the definition the model card quotes):

    MOS = BASE_QUALITY * 100 * (1 - S),  S = 1 - prod_i (1 - s_i)

where s_i in [0, 1] is the recorded severity of each degradation step applied
(``pyfundus.data.degrade``), so S is the chance that at least one defect spoils
the image if each does so independently with probability s_i. An undegraded
photo scores BASE_QUALITY * 100 = 95: clean captures still vary, and FQS's best
images sit in the 90s. The class follows from MOS with the proxy thresholds
below, which are the definition of the label, not a calibration.

Before degrading, each variant's clean source is rendered by a random *camera*
(:class:`pyfundus.data.camera.Camera`: colour, tone curve, optical softness and
resolution, sharpening, rim fall-off, grain, JPEG storage, a 4:3 frame) that does
not change its label. Cameras render the same retina differently; with few source
photos, a model that never saw that spread learns "looks like my training
photos" instead of "is degraded" and scores unfamiliar clean photos low.

Every image is written with its camera and full degradation record, so any of
them can be regenerated exactly from its source photo.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..grading import Thresholds
from ..io import read_image
from ..preprocess import crop_to_field_of_view, find_field_of_view
from ..progress import progress_bar
from .camera import Camera
from .datasets import QualityRecord, write_fqs_table
from .degrade import TYPES, degrade, overall_severity

log = logging.getLogger(__name__)

BASE_QUALITY = 0.95
PROXY_THRESHOLDS = Thresholds(reject_below=40.0, good_from=70.0)
WORKING_SIZE = 512  # degradations run at the cofe-Net resolution
CLEAN_FRACTION = 0.15  # default share of variants left undegraded, so "Good" is well represented
TABLE_NAME = "labels.csv"
RECORDS_NAME = "degradations.jsonl"


def proxy_mos(severities: Sequence[float]) -> float:
    """The proxy MOS for an image degraded with steps of these severities (see module docstring)."""
    return BASE_QUALITY * 100.0 * (1.0 - overall_severity(list(severities)))


@dataclass(frozen=True)
class Source:
    source_id: str
    path: str | None = None  # a real photo
    synth_seed: int | None = None  # or a synthetic fundus


def build_proxy(
    photos: Sequence[str | Path],
    out_dir: str | Path,
    *,
    synthetic: int = 0,
    variants: int = 10,
    seed: int = 0,
    clean_fraction: float = CLEAN_FRACTION,
    camera_looks: bool = True,
    focus: Sequence[str] = (),
    workers: int = 2,
    progress: bool = True,
) -> list[QualityRecord]:
    """Write ``variants`` degraded versions of each source into ``out_dir`` (FQS layout) and return the records.

    ``clean_fraction`` of the variants stay undegraded; ``camera_looks`` renders each
    variant's clean source by a random camera first (see :class:`~pyfundus.data.camera.Camera`).
    ``focus``: each degraded variant gets exactly one of these degradation types (instead of one to
    three of any), to teach the families a model ranks poorly.
    """
    if not 0.0 <= clean_fraction <= 1.0:
        raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction}")
    unknown = set(focus) - set(TYPES)
    if unknown:
        raise ValueError(f"unknown degradation type(s) {sorted(unknown)}; known: {', '.join(TYPES)}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    sources = [Source(Path(p).stem, path=str(p)) for p in photos]
    sources += [Source(f"synth{seed:03d}_{i:05d}", synth_seed=seed * 1_000_003 + i) for i in range(synthetic)]
    jobs = [(source, out_dir, variants, seed, clean_fraction, camera_looks, tuple(focus)) for source in sources]
    records: list[QualityRecord] = []
    lines: list[str] = []
    with ProcessPoolExecutor(max_workers=workers) as pool, progress_bar(
        len(sources) * variants, desc="proxy images", unit="img", enabled=progress
    ) as bar:
        for source_records, source_lines in pool.map(_build_source, jobs):
            records.extend(source_records)
            lines.extend(source_lines)
            bar.update(variants)
    write_fqs_table(records, out_dir / TABLE_NAME, out_dir / "images")
    (out_dir / RECORDS_NAME).write_text("".join(lines))
    return records


def _build_source(job) -> tuple[list[QualityRecord], list[str]]:
    source, out_dir, variants, seed, clean_fraction, camera_looks, focus = job
    clean = _load_source(source)
    records, lines = [], []
    for variant in range(variants):
        rng = np.random.default_rng([seed, _stable_hash(source.source_id), variant])
        keep_clean = rng.random() < clean_fraction
        camera = Camera.draw(rng) if camera_looks else Camera()
        types = [] if keep_clean else [focus[int(rng.integers(len(focus)))]] if focus else None
        image, record = degrade(camera.render(clean), rng, types=types)
        mos = proxy_mos([step["severity"] for step in record.steps])
        name = f"{source.source_id}_{variant:03d}.png"
        Image.fromarray(image).save(out_dir / "images" / name, compress_level=1)
        records.append(
            QualityRecord(
                path=out_dir / "images" / name,
                mos=mos,
                level=PROXY_THRESHOLDS.classify(mos),
                source_id=source.source_id,
                causes=record.causes,
                degradation="+".join(step["type"] for step in record.steps) or "none",
            )
        )
        lines.append(
            json.dumps(
                {
                    "file_name": name,
                    "source": _describe_source(source),
                    "camera": camera.to_dict(),
                    "record": json.loads(record.to_json()),
                }
            )
            + "\n"
        )
    return records, lines


def _load_source(source: Source) -> np.ndarray:
    """The source photo cropped to its field of view, WORKING_SIZE square."""
    if source.path is not None:
        rgb = read_image(source.path, min_side=WORKING_SIZE).pixels
    else:
        from .synth import generate_fundus

        rgb, _ = generate_fundus(source.synth_seed, size=WORKING_SIZE)
    square = crop_to_field_of_view(rgb, find_field_of_view(rgb))
    return np.asarray(Image.fromarray(square).resize((WORKING_SIZE, WORKING_SIZE), Image.Resampling.LANCZOS))


def _describe_source(source: Source) -> dict:
    if source.path is not None:
        return {"photo": Path(source.path).name}
    return {"synthetic_seed": source.synth_seed, "size": WORKING_SIZE}


def _stable_hash(text: str) -> int:
    """A per-source seed component that, unlike hash(), is the same in every process and run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
