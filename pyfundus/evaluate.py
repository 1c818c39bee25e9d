"""Evaluate a quality scorer on labelled images: metrics, per-degradation breakdown, reports, split rounds.

A *scorer* is anything with ``.score(paths, batch_size=..., progress=callback)``
returning results that have ``.score``, ``.quality_class`` and ``.error``:
:class:`pyfundus.api.QualityModel` and :class:`pyfundus.models.brisque.BrisqueSVR` both fit.

Images that fail to score are kept in the predictions with their error,
excluded from every metric, and listed in the report, so a metric is never
silently computed on a subset.

Metric values that cannot be measured (a constant prediction, a group of one
image) are ``nan`` in the returned dicts and ``null`` in the JSON reports.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .data.datasets import QualityRecord, load_records, split_records
from .metrics import accuracy, confusion_matrix, plcc, quadratic_weighted_kappa, rmse, srcc
from .verdicts import CLASSES

__all__ = [
    "Predictions",
    "aggregate_rounds",
    "predict_records",
    "run_eval",
    "summarise",
    "write_report",
]

SCALAR_METRICS = (
    "n", "n_scored", "n_failed", "n_with_mos", "plcc", "srcc", "rmse", "n_with_level", "accuracy", "qwk",
)  # fmt: skip
_CLASS_COLOURS = {"Good": "#1a9850", "Usable": "#f1a340", "Reject": "#d73027"}
_NO_CLASS_COLOUR = "#7f7f7f"


@dataclass
class Predictions:
    """One entry per record, in record order; ``scores`` is nan and ``errors`` set where scoring failed."""

    paths: list[str]
    scores: np.ndarray  # float, nan when failed
    targets: np.ndarray  # MOS, nan when the record has none
    pred_levels: list[str | None]
    true_levels: list[str | None]
    degradations: list[str]
    sources: list[str]
    errors: list[str | None]

    def __len__(self) -> int:
        return len(self.paths)


def predict_records(
    scorer: Any, records: Sequence[QualityRecord], *, batch_size: int = 8, progress: bool = True
) -> Predictions:
    """Score every record's image with ``scorer``; a progress bar on stderr unless ``progress`` is False."""
    from tqdm import tqdm

    paths = [str(r.path) for r in records]
    with tqdm(total=len(paths), unit="img", disable=not progress, leave=False) as bar:
        results = scorer.score(paths, batch_size=batch_size, progress=bar.update)
    if len(results) != len(records):
        raise RuntimeError(f"scorer returned {len(results)} results for {len(records)} images")
    failed = [r.error is not None or r.score is None for r in results]
    return Predictions(
        paths=paths,
        scores=np.array([math.nan if bad else float(r.score) for r, bad in zip(results, failed)]),
        targets=np.array([math.nan if r.mos is None else float(r.mos) for r in records]),
        pred_levels=[None if bad else r.quality_class for r, bad in zip(results, failed)],
        true_levels=[r.level for r in records],
        degradations=[r.degradation or "" for r in records],
        sources=[r.source_id for r in records],
        errors=[(r.error or "no score returned") if bad else None for r, bad in zip(results, failed)],
    )


def summarise(predictions: Predictions) -> dict[str, Any]:
    """Metrics of one evaluation (see the module docstring for nan)."""
    p = predictions
    scored = np.array([e is None for e in p.errors], dtype=bool)
    with_mos = scored & np.isfinite(p.targets)
    labelled = [t is not None and q is not None for t, q in zip(p.true_levels, p.pred_levels)]
    with_level = scored & np.array(labelled, dtype=bool)
    pred_levels = [p.pred_levels[i] for i in np.flatnonzero(with_level)]
    true_levels = [p.true_levels[i] for i in np.flatnonzero(with_level)]
    return {
        "n": len(p),
        "n_scored": int(scored.sum()),
        "n_failed": int((~scored).sum()),
        "n_with_mos": int(with_mos.sum()),
        **_score_metrics(p.scores[with_mos], p.targets[with_mos]),
        "n_with_level": int(with_level.sum()),
        "accuracy": accuracy(pred_levels, true_levels),
        "qwk": quadratic_weighted_kappa(pred_levels, true_levels),
        "confusion": {
            "labels": list(CLASSES),
            "rows": "true",
            "columns": "predicted",
            "matrix": confusion_matrix(pred_levels, true_levels).tolist(),
        },
        "per_degradation": _per_degradation(p, with_mos),
        "per_source": _per_source(p, with_mos),
        "failures": [{"path": path, "error": e} for path, e in zip(p.paths, p.errors) if e is not None],
    }


def aggregate_rounds(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1; nan for one round) of each scalar metric over rounds.

    Also aggregates ``per_degradation`` metrics for the degradation types that
    occur in every round. Rounds where a metric is nan are left out of its mean
    and std; ``n_rounds`` says how many counted.
    """
    metrics = {
        name: _mean_std([s[name] for s in summaries]) for name in SCALAR_METRICS if all(name in s for s in summaries)
    }
    types = set.intersection(*(set(s.get("per_degradation", {})) for s in summaries)) if summaries else set()
    per_degradation = {
        kind: {
            name: _mean_std([s["per_degradation"][kind][name] for s in summaries])
            for name in summaries[0]["per_degradation"][kind]
        }
        for kind in sorted(types)
    }
    return {"rounds": len(summaries), "metrics": metrics, "per_degradation": per_degradation}


def write_report(summary: dict[str, Any], out_dir: str | Path, predictions: Predictions, *, title: str) -> list[Path]:
    """Write report.json, predictions.csv, scatter.png (when any MOS) and confusion.png (when any level).

    Needs matplotlib for the plots (``pip install matplotlib``). Returns the files written.
    """
    figure_cls = _matplotlib_figure()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_json(out / "report.json", {"title": title, **summary}),
        _write_predictions(out / "predictions.csv", predictions),
    ]
    if summary["n_with_mos"]:
        written.append(_plot_scatter(figure_cls, out / "scatter.png", predictions, summary, title))
    if summary["n_with_level"]:
        written.append(_plot_confusion(figure_cls, out / "confusion.png", summary, title))
    return written


def run_eval(
    model: str,
    data: str | Path,
    *,
    split: Literal["train", "test", "val"] | None = "test",
    protocol: Literal["paper", "kfold"] = "paper",
    seed: int = 0,
    rounds: int = 1,
    out_dir: str | Path = "eval",
    batch_size: int = 8,
    device: str = "cpu",
    image_dir: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` and write reports into ``out_dir``; returns the aggregate.

    ``model``: a registered classical model such as "brisque" (fitted on the train side of
    each round's split), or anything ``pyfundus.load_model`` accepts (a fitted .json included).
    ``split``: evaluate on that side of ``split_records(protocol, seed,
    round_index=r)`` for r in range(rounds), writing ``round_NN/`` reports; None
    evaluates every record once (not possible with a classical model still to be fitted).
    A pretrained model is evaluated as it is: use the split (protocol, seed,
    round) it was trained with, or its training images leak into the test side.
    ``workers``: processes for BRISQUE feature extraction.
    Writes ``aggregate.json`` (the returned dict) into ``out_dir``.
    """
    if split not in (None, "train", "test", "val"):
        raise ValueError(f"split must be 'train', 'test', 'val' or None, not {split!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    from .models import is_classical, is_model

    to_fit = is_model(model) and is_classical(model)
    if split is None and to_fit:
        raise ValueError(f"{model!r} must be fitted on a train split: give a split, or a fitted .json file")
    records = load_records(data, image_dir=image_dir)
    if not records:
        raise ValueError(f"{data}: no labelled images")
    out = Path(out_dir)
    fixed = None if to_fit else _load_scorer(model, device, workers)
    feature_cache: dict = {}  # BRISQUE rounds share features: each image is measured once
    summaries = []
    for r in range(rounds if split is not None else 1):
        parts = _split(records, split, protocol, seed, r)
        subset = parts[split or "all"]
        if not subset:
            raise ValueError(f"round {r}: the {split} side of the {protocol} split is empty")
        round_dir = out / f"round_{r:02d}" if split is not None else out
        scorer = fixed
        if scorer is None:
            from .train import fit_classical

            scorer, _ = fit_classical(
                model, parts["train"], round_dir, workers=workers, progress=progress, feature_cache=feature_cache
            )
        predictions = predict_records(scorer, subset, batch_size=batch_size, progress=progress)
        summary = summarise(predictions)
        title = f"{Path(model).name} on {Path(data).name}" + (f" ({split}, {protocol} round {r})" if split else "")
        write_report(summary, round_dir, predictions, title=title)
        summaries.append(summary)
    result = {
        "config": {
            "model": str(model), "data": str(data), "split": split, "protocol": protocol, "seed": seed,
            "rounds": len(summaries), "batch_size": batch_size, "device": device,
        },
        **aggregate_rounds(summaries),
    }  # fmt: skip
    _write_json(out / "aggregate.json", result)
    return result


# --- summarising --------------------------------------------------------------------


def _score_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {"plcc": plcc(scores, targets), "srcc": srcc(scores, targets), "rmse": rmse(scores, targets)}


def _per_degradation(p: Predictions, with_mos: np.ndarray) -> dict[str, dict[str, float]]:
    """Metrics per degradation type; an image degraded with "blur+spots" counts under both types."""
    by_type: dict[str, list[int]] = {}
    for i in np.flatnonzero(with_mos):
        for kind in filter(None, (part.strip() for part in p.degradations[i].split("+"))):
            by_type.setdefault(kind, []).append(int(i))
    breakdown = {}
    for kind in sorted(by_type):
        idx = np.array(by_type[kind])
        scores, targets = p.scores[idx], p.targets[idx]
        breakdown[kind] = {
            "n": len(idx), **_score_metrics(scores, targets), "mean_error": float(np.mean(scores - targets)),
        }  # fmt: skip
    return breakdown


def _per_source(p: Predictions, with_mos: np.ndarray) -> dict[str, dict[str, Any]]:
    """Metrics per source photo, and the mean score of its undegraded variants (``clean_score``).

    Pooled SRCC mixes two things: ranking the degradations of one photo, and
    placing different cameras' clean photos at the same level. These separate them.
    """
    breakdown = {}
    for source in sorted(set(p.sources[i] for i in np.flatnonzero(with_mos))):
        idx = np.array([i for i in np.flatnonzero(with_mos) if p.sources[i] == source])
        clean = [p.scores[i] for i in idx if p.degradations[i] in ("", "none")]
        breakdown[source] = {
            "n": len(idx), **_score_metrics(p.scores[idx], p.targets[idx]),
            "mean_error": float(np.mean(p.scores[idx] - p.targets[idx])),
            "clean_score": float(np.mean(clean)) if clean else None,
        }  # fmt: skip
    return breakdown


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    arr = np.array([math.nan if v is None else float(v) for v in values])
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else math.nan,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
        "n_rounds": int(finite.size),
        "values": arr.tolist(),
    }


# --- writing --------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    """NaN and infinities become null: strict JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(document), indent=2, allow_nan=False) + "\n")
    return path


def _write_predictions(path: Path, p: Predictions) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "target", "pred_class", "true_class", "degradation", "source_id", "error"])
        for i in range(len(p)):
            writer.writerow([
                p.paths[i], _cell(p.scores[i]), _cell(p.targets[i]), p.pred_levels[i] or "",
                p.true_levels[i] or "", p.degradations[i], p.sources[i], p.errors[i] or "",
            ])  # fmt: skip
    return path


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def _matplotlib_figure() -> type:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("evaluation plots need matplotlib: pip install matplotlib") from exc
    return Figure


def _save(figure: Any, path: Path) -> Path:
    # An explicit Agg canvas: no pyplot, so no global backend switch and no GUI, even on a desktop session.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)
    return path


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _plot_scatter(figure_cls: type, path: Path, p: Predictions, summary: dict[str, Any], title: str) -> Path:
    figure = figure_cls(figsize=(6, 6), layout="constrained")
    ax = figure.add_subplot()
    ok = np.isfinite(p.scores) & np.isfinite(p.targets)
    for level in (*CLASSES, None):
        sel = ok & np.array([t == level for t in p.true_levels], dtype=bool)
        if sel.any():
            colour = _CLASS_COLOURS.get(level, _NO_CLASS_COLOUR)
            ax.scatter(p.targets[sel], p.scores[sel], s=10, alpha=0.6, color=colour, label=level or "no class")
    ax.plot([0, 100], [0, 100], color="black", linewidth=1, linestyle="--", label="identity")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="target MOS", ylabel="predicted score", aspect="equal")
    ax.legend(loc="upper left", title="true class", fontsize="small")
    ax.set_title(
        f"{title}\nSRCC {_fmt(summary['srcc'], 4)}  PLCC {_fmt(summary['plcc'], 4)}  "
        f"RMSE {_fmt(summary['rmse'], 2)}  n={summary['n_with_mos']}",
        fontsize="medium",
    )
    return _save(figure, path)


def _plot_confusion(figure_cls: type, path: Path, summary: dict[str, Any], title: str) -> Path:
    matrix = np.array(summary["confusion"]["matrix"])
    figure = figure_cls(figsize=(5, 4.6), layout="constrained")
    ax = figure.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    k = len(CLASSES)
    ax.set(xticks=range(k), yticks=range(k), xticklabels=CLASSES, yticklabels=CLASSES)
    ax.set(xlabel="predicted", ylabel="true")
    dark = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            colour = "white" if matrix[i, j] > dark else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_title(
        f"{title}\naccuracy {_fmt(summary['accuracy'], 3)}  QWK {_fmt(summary['qwk'], 3)}  n={summary['n_with_level']}",
        fontsize="medium",
    )
    return _save(figure, path)


# --- loading ----------------------------------------------------------------------------


def _split(
    records: list[QualityRecord], split: str | None, protocol: str, seed: int, round_index: int
) -> dict[str, list[QualityRecord]]:
    if split is None:
        return {"all": records}
    return split_records(records, protocol=protocol, seed=seed, round_index=round_index)


def _load_scorer(model: str, device: str, workers: int) -> Any:
    from .api import load_model

    scorer = load_model(model, device=device)
    if hasattr(scorer, "workers"):  # a classical model: feature extraction in worker processes
        scorer.workers = workers
    return scorer
