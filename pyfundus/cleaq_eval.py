"""Evaluating CLEAQ-DR's parts: ``pyfundus eval --task enhance|iqa|dr``.

**Enhancement** (:func:`evaluate_enhancement`): clean held-out photos, each cropped to its field of view at
512 px (cofe-Net's and CLEAQ-DR's size), degraded afresh (``draws`` per family: the three cofe-Net types alone,
``cofe_one_or_two``, ``cofe_all_three``), then restored by every method in one run: the degraded image itself,
CLAHE, unsharp masking, IETK-Ret and pyfundus' enhancer (through ``Enhancer.enhance_array``, the path
``pyfundus enhance`` takes). Per method: PSNR and SSIM against the clean photo inside the field of view; the
Dice between the vesselness masks (``pyfundus.data.vessels``) of the output and of the clean photo (vessel
structure kept); the FTHNet score of the output. The clean photos are enhanced too: enhancement must not harm
them. Writes report.json, cases.csv, table.md, grid.png (before/after), metrics.png and fthnet.png.

**Quality** (:func:`evaluate_iqa`): a C-IQA model's Good/Usable/Reject next to FTHNet's classes and their
ensemble (the mean of the two probability vectors). **Grading** (:func:`evaluate_grader`): a grader's
accuracy, quadratic-weighted kappa, macro precision and macro F1 (not the micro F1 of the authors' code),
overall and per quality class.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .data.cleaq import SIZE, field_mask, load_cleaq
from .data.degrade import cofe_all_three, cofe_degrade, cofe_one_or_two
from .data.vessels import vessel_mask_from_photo
from .io import read_image
from .metrics import dice, psnr, quadratic_weighted_kappa, ssim
from .preprocess import crop_to_field_of_view, find_field_of_view
from .progress import progress_bar
from .verdicts import CLASSES

__all__ = ["BASELINES", "FAMILIES", "clahe", "evaluate_enhancement", "evaluate_grader", "evaluate_iqa",
           "format_summary", "unsharp_mask"]  # fmt: skip

FAMILIES = ("illumination", "spots", "blur", "one or two", "all three")
_CODES = {"illumination": "001", "spots": "010", "blur": "100"}
BASELINES = ("degraded", "clahe", "unsharp", "ietk")
OURS = "pyfundus"
IETK_PYTHON_ENV = "PYFUNDUS_IETK_PYTHON"


# ---- the classical baselines ------------------------------------------------------------------


def clahe(rgb: np.ndarray, mask: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the lightness of CIELAB (the usual fundus setting: clip 2, 8x8 tiles); outside the field kept."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    return np.where(mask[..., None], cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), rgb)


def unsharp_mask(rgb: np.ndarray, mask: np.ndarray, sigma: float = 2.0, amount: float = 1.0) -> np.ndarray:
    """x + amount (x - G_sigma * x): sigma 2 px at 512 px, about a small vessel's width."""
    x = rgb.astype(np.float32)
    sharp = np.clip(x + amount * (x - cv2.GaussianBlur(x, (0, 0), sigma)), 0, 255)
    return np.where(mask[..., None], np.round(sharp).astype(np.uint8), rgb)


def ietk(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], python: str | None) -> list[np.ndarray] | str:
    """IETK-Ret's 'A+B+X' on each image (uint8 RGB), in this interpreter if it has ``ietk``, else through
    ``python`` (an environment with IETK-Ret, see pyfundus.ietk_baseline). Returns the outputs, or why not."""
    from . import ietk_baseline

    try:
        import ietk as _  # noqa: F401

        return [_to_uint8(ietk_baseline.ietk_enhance(im / 255.0, m)) for im, m in zip(images, masks)]
    except ImportError:
        pass
    if not python:
        return (f"IETK-Ret is not installed here and no --ietk-python (or ${IETK_PYTHON_ENV}) names an environment "
                "that has it (see pyfundus/ietk_baseline.py)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pyfundus-ietk-") as folder:
        source, target = Path(folder) / "in", Path(folder) / "out"
        source.mkdir()
        for i, (im, m) in enumerate(zip(images, masks)):
            np.save(source / f"{i:05d}.npy", im.astype(np.float32) / 255.0)
            np.save(source / f"{i:05d}.mask.npy", m)
        done = subprocess.run([python, ietk_baseline.__file__, str(source), str(target)], capture_output=True, text=True)
        if done.returncode:
            return f"IETK-Ret failed in {python}: {done.stderr.strip()[-500:]}"
        return [_to_uint8(np.load(target / f"{i:05d}.npy")) for i in range(len(images))]


def _to_uint8(image01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)


# ---- enhancement -------------------------------------------------------------------------------


def evaluate_enhancement(
    photos: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    enhancer: str | None = None,
    quality_model: str | None = None,
    draws: int = 3,
    seed: int = 0,
    baselines: Sequence[str] | None = None,
    ietk_python: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The enhancement benchmark (module docstring). Returns the summary also written to report.json."""
    from .api import load_enhancer, load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    baselines = list(BASELINES if baselines is None else baselines)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; known: {', '.join(BASELINES)}")
    model = load_enhancer(enhancer)
    scorer = load_model(quality_model)
    scorer.warn_untrained = False
    started = time.perf_counter()
    cases = _cases(photos, draws, seed)
    methods = baselines + [OURS]
    outputs: dict[str, list[np.ndarray]] = {}
    notes: dict[str, str] = {}
    if "ietk" in baselines:
        done = ietk([c["input"] for c in cases], [c["mask"] for c in cases], ietk_python or os.environ.get(IETK_PYTHON_ENV))
        if isinstance(done, str):
            notes["ietk"] = done
            methods.remove("ietk")
        else:
            outputs["ietk"] = done
    rows = []
    with progress_bar(len(cases), desc="enhancing", unit="img", enabled=progress) as bar:
        for index, case in enumerate(cases):
            results = {}
            for method in methods:
                image = case["input"]
                if method == "clahe":
                    image = clahe(image, case["mask"])
                elif method == "unsharp":
                    image = unsharp_mask(image, case["mask"])
                elif method == "ietk":
                    image = outputs["ietk"][index]
                elif method == OURS:
                    image = model.enhance_array(image, fov=case["fov"])
                results[method] = image
            case["outputs"] = {m: results[m] for m in methods} if case["draw"] == 0 else {}
            scores = scorer.score([results[m] for m in methods], batch_size=len(methods))
            for method, score in zip(methods, scores):
                image = results[method]
                rows.append({
                    "photo": case["photo"], "family": case["family"], "draw": case["draw"], "method": method,
                    "psnr": psnr(image, case["clean"], case["mask"]), "ssim": ssim(image, case["clean"], case["mask"]),
                    "vessel_dice": dice(vessel_mask_from_photo(image, case["mask"]), case["vessels"]),
                    "fthnet": score.score,
                })  # fmt: skip
            bar.update(1)
    _write_rows(out / "cases.csv", rows)  # first: a failure below keeps the measurements
    summary = _enhancement_summary(rows, methods)
    summary.update(
        photos=[str(p) for p in photos], draws=draws, seed=seed, size=SIZE, notes=notes,
        enhancer={"name": model.name, "arch": model.config.arch, "sha256": model.sha256, "trained": model.trained},
        quality_model={"name": scorer.name, "sha256": scorer.sha256}, seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "table.md").write_text(format_summary(summary) + "\n")
    _plot_enhancement(out, cases, summary, rows, methods)
    return summary


def _cases(photos: Sequence[str | os.PathLike], draws: int, seed: int) -> list[dict[str, Any]]:
    """The clean photos at 512 px and their fresh degradations: one case per (photo, family, draw)."""
    cases = []
    for p, photo in enumerate(photos):
        rgb = read_image(photo).pixels
        clean = cv2.resize(crop_to_field_of_view(rgb, find_field_of_view(rgb)), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        mask = field_mask(clean)
        fov = find_field_of_view(clean)  # found on the clean photo: its degraded copies share it
        common = {"photo": Path(photo).name, "clean": clean, "mask": mask, "fov": fov, "vessels": vessel_mask_from_photo(clean, mask)}
        cases.append({**common, "family": "clean", "draw": 0, "input": clean})
        for f, family in enumerate(FAMILIES):
            for draw in range(draws):
                rng = np.random.default_rng([seed, p, f, draw])
                if family in _CODES:
                    degraded, _ = cofe_degrade(clean, _CODES[family], rng, mask=mask)
                else:
                    degraded, _ = (cofe_one_or_two if family == "one or two" else cofe_all_three)(clean, rng, mask=mask)
                cases.append({**common, "family": family, "draw": draw, "input": degraded})
    return cases


def _enhancement_summary(rows: list[dict], methods: list[str]) -> dict[str, Any]:
    def mean(selected: list[dict], key: str) -> float:
        values = [r[key] for r in selected if r[key] is not None]
        return float(np.mean(values)) if values else float("nan")  # inf when an output is the clean photo itself

    table: dict[str, dict[str, dict[str, float]]] = {}
    families = [*FAMILIES, "all degraded", "clean"]
    for family in families:
        chosen = [r for r in rows if (r["family"] != "clean" if family == "all degraded" else r["family"] == family)]
        if not chosen:
            continue
        table[family] = {
            m: {k: mean([r for r in chosen if r["method"] == m], k) for k in ("psnr", "ssim", "vessel_dice", "fthnet")}
            for m in methods
        }
    beats = {}
    for family in [*FAMILIES, "all degraded"]:
        if family not in table or OURS not in table[family]:
            continue
        others = [m for m in methods if m != OURS]
        beats[family] = {
            metric: all(table[family][OURS][metric] > table[family][m][metric] for m in others)
            for metric in ("psnr", "ssim", "vessel_dice")
        }
    fthnet = {}
    by_case: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_case.setdefault((r["photo"], r["family"], r["draw"]), {})[r["method"]] = r["fthnet"]
    for label, selected in (("degraded", [v for k, v in by_case.items() if k[1] != "clean"]),
                            ("clean", [v for k, v in by_case.items() if k[1] == "clean"])):  # fmt: skip
        if selected and OURS in selected[0]:
            # FTHNet gives no score where it finds no field of view (a capture darkened past its detector):
            # such a case is counted, not averaged, on either side.
            scored = [v for v in selected if v[OURS] is not None and v["degraded"] is not None]
            if not scored:
                continue
            change = np.array([v[OURS] - v["degraded"] for v in scored])
            fthnet[label] = {
                "before": float(np.mean([v["degraded"] for v in scored])),
                "after": float(np.mean([v[OURS] for v in scored])),
                "mean_change": float(change.mean()),
                "share_rose": float(np.mean(change > 0)),
                "share_fell_over_1": float(np.mean(change < -1.0)),
                "n": len(scored),
                "unscored_before": sum(v["degraded"] is None for v in selected),
                "unscored_after": sum(v[OURS] is None for v in selected),
            }
    return {"table": table, "pyfundus_beats_all_baselines": beats, "fthnet": fthnet, "methods": methods}


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plot_enhancement(out: Path, cases: list[dict], summary: dict, rows: list[dict], methods: list[str]) -> None:
    from .evaluate import _matplotlib_figure

    figure_cls = _matplotlib_figure()
    shown = [c for c in cases if c["family"] == "all three" and c["draw"] == 0 and c["outputs"]]
    if shown:
        columns = ["clean", *methods]
        figure = figure_cls(figsize=(2.2 * len(columns), 2.3 * len(shown)))
        axes = np.atleast_2d(figure.subplots(len(shown), len(columns)))
        for row, case in zip(axes, shown):
            for ax, method in zip(row, columns):
                image = case["clean"] if method == "clean" else case["outputs"][method]
                ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                if method != "clean":
                    ax.set_xlabel(f"{psnr(image, case['clean'], case['mask']):.1f} dB / "
                                  f"{ssim(image, case['clean'], case['mask']):.3f}", fontsize=8)  # fmt: skip
            row[0].set_ylabel(case["photo"], fontsize=8)
        for ax, method in zip(axes[0], columns):
            ax.set_title(method, fontsize=9)
        figure.suptitle("all three cofe-Net degradations, restored (PSNR / SSIM inside the field of view)", fontsize=10)
        figure.tight_layout()
        figure.savefig(out / "grid.png", dpi=90)
    families = [f for f in (*FAMILIES, "all degraded") if f in summary["table"]]
    figure = figure_cls(figsize=(12, 3.8))
    for ax, metric in zip(figure.subplots(1, 3), ("psnr", "ssim", "vessel_dice")):
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            ax.bar(np.arange(len(families)) + i * width, [summary["table"][f][method][metric] for f in families],
                   width, label=method)  # fmt: skip
        ax.set_xticks(np.arange(len(families)) + 0.4 - width / 2, families, rotation=30, fontsize=8)
        ax.set_title({"psnr": "PSNR (dB)", "ssim": "SSIM", "vessel_dice": "vessel Dice vs clean"}[metric])
        low = min(summary["table"][f][m][metric] for f in families for m in methods)
        ax.set_ylim(low * 0.95 if metric == "psnr" else max(0.0, low - 0.05), None)
    figure.axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "metrics.png", dpi=100)
    if OURS in methods:
        figure = figure_cls(figsize=(5, 4.5))
        ax = figure.subplots()
        for family, marker in (("degraded", "o"), ("clean", "s")):
            before = [r["fthnet"] for r in rows if r["method"] == "degraded" and (r["family"] == "clean") == (family == "clean")]
            after = [r["fthnet"] for r in rows if r["method"] == OURS and (r["family"] == "clean") == (family == "clean")]
            pairs = [(b, a) for b, a in zip(before, after) if a is not None and b is not None]  # both scored
            ax.scatter([b for b, _ in pairs], [a for _, a in pairs], marker=marker, s=14, label=f"{family} inputs")
        ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8)
        ax.set(xlabel="FTHNet score of the input", ylabel="FTHNet score after pyfundus enhance", xlim=(0, 100), ylim=(0, 100))
        ax.legend()
        figure.tight_layout()
        figure.savefig(out / "fthnet.png", dpi=100)


# ---- quality and grading -----------------------------------------------------------------------


def evaluate_iqa(
    model: str, data: str, out: str | os.PathLike, *, quality_model: str | None = None, compare_fthnet: bool = True,
    device: str = "cpu", progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A C-IQA model's classes against the labels, beside FTHNet's (its thresholds) and their ensemble."""
    import torch

    from .api import load_model, load_network

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    network, config, name, file = load_network(model, "quality_class")
    network.eval().to(device)
    records = [r for r in load_cleaq(data).records if r.quality]
    if not records:
        raise ValueError(f"{data}: no quality labels")
    squares = [_square(r) for r in records]
    size = config.input.size
    probabilities = []
    with torch.no_grad(), progress_bar(len(squares), desc="C-IQA", unit="img", enabled=progress) as bar:
        for start in range(0, len(squares), 8):
            batch = np.stack([_unit_chw(cv2.resize(s, (size, size), interpolation=cv2.INTER_AREA)) for s in squares[start : start + 8]])
            logits = network(torch.from_numpy(batch).to(device)).float()
            probabilities.append(torch.softmax(logits, 1).cpu().numpy())
            bar.update(len(batch))
    opinions = {"C-IQA": np.concatenate(probabilities)}
    scorer = None
    if compare_fthnet:
        scorer = load_model(quality_model)
        scorer.warn_untrained = False
        scored = scorer.score(squares)
        opinions["FTHNet"] = np.array([[r.probabilities[c] for c in CLASSES] for r in scored])
        opinions["ensemble"] = (opinions["C-IQA"] + opinions["FTHNet"]) / 2
    truth = [r.quality for r in records]
    results = {who: _class_metrics([CLASSES[i] for i in p.argmax(1)], truth, CLASSES) for who, p in opinions.items()}
    summary = {
        "task": "iqa", "model": {"name": name, "sha256": _sha(file), "arch": config.arch}, "data": str(data),
        "n": len(records), "results": results,
        "quality_model": None if scorer is None else {"name": scorer.name, "sha256": scorer.sha256},
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=float))
    _plot_confusions(out / "confusion.png", results, CLASSES)
    return summary


def evaluate_grader(model: str, data: str, out: str | os.PathLike, *, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """A grader's accuracy, quadratic-weighted kappa, macro precision and F1, overall and per quality class."""
    from .api import load_grader

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grader = load_grader(model, device)
    dataset = load_cleaq(data)
    records = [r for r in dataset.records if r.dr_grade is not None]
    if not records:
        raise ValueError(f"{data}: no DR grades")
    labels = [str(i) for i in range(len(grader.grades))]
    predicted = []
    with progress_bar(len(records), desc="grading", unit="img", enabled=progress) as bar:
        for start in range(0, len(records), 8):
            chunk = [_square(r) for r in records[start : start + 8]]
            predicted += [str(g.grade) for g in grader.grade(chunk, batch_size=8)]
            bar.update(len(chunk))
    truth = [str(r.dr_grade) for r in records]
    results = {"all": _class_metrics(predicted, truth, labels)}
    for level in CLASSES:
        chosen = [i for i, r in enumerate(records) if r.quality == level]
        if chosen:
            results[f"{level} images"] = _class_metrics([predicted[i] for i in chosen], [truth[i] for i in chosen], labels)
    summary = {"task": "dr", "model": {"name": grader.name, "sha256": grader.sha256}, "data": str(data),
               "grades": grader.grades, "n": len(records), "results": results}  # fmt: skip
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=float))
    _plot_confusions(out / "confusion.png", {"grader": results["all"]}, grader.grades)
    return summary


def _class_metrics(predicted: Sequence[str], truth: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    from .metrics import confusion_matrix

    counts = confusion_matrix(predicted, truth, labels)
    tp = np.diag(counts).astype(float)
    precision = np.divide(tp, counts.sum(0), out=np.full(len(labels), np.nan), where=counts.sum(0) > 0)
    recall = np.divide(tp, counts.sum(1), out=np.full(len(labels), np.nan), where=counts.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(labels)), where=(precision + recall) > 0)
    present = counts.sum(1) > 0
    return {
        "accuracy": float(tp.sum() / max(1, counts.sum())),
        "kappa": quadratic_weighted_kappa(predicted, truth, labels),
        "macro_precision": float(np.nanmean(precision[present])) if present.any() else float("nan"),
        "macro_f1": float(np.mean(f1[present])) if present.any() else float("nan"),
        "confusion": counts.tolist(),
        "n": int(counts.sum()),
    }


def _square(record) -> np.ndarray:
    from PIL import Image

    if record.cropped:
        return np.asarray(Image.open(record.image).convert("RGB"))
    rgb = read_image(record.image, min_side=SIZE).pixels
    return crop_to_field_of_view(rgb, find_field_of_view(rgb))


def _unit_chw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / 255.0


def _sha(file) -> str | None:
    from .paths import sha256_file

    return sha256_file(file) if file is not None else None


def _plot_confusions(path: Path, results: dict[str, dict], labels: Sequence[str]) -> None:
    from .evaluate import _matplotlib_figure

    figure_cls = _matplotlib_figure()
    figure = figure_cls(figsize=(3.6 * len(results), 3.4))
    for ax, (who, result) in zip(np.atleast_1d(figure.subplots(1, len(results))), results.items()):
        counts = np.array(result["confusion"])
        ax.imshow(counts, cmap="Blues")
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=f"{who}: acc {result['accuracy']:.3f}, kappa {result['kappa']:.3f}")
        ax.title.set_fontsize(8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def format_summary(summary: dict[str, Any]) -> str:
    """A Markdown table of a summary from any of the three evaluations."""
    if "table" in summary:
        methods = summary["methods"]
        lines = ["| family | " + " | ".join(f"{m} PSNR / SSIM / vessel Dice" for m in methods) + " |",
                 "|---|" + "---:|" * len(methods)]  # fmt: skip
        for family, by_method in summary["table"].items():
            cells = [f"{v['psnr']:.2f} / {v['ssim']:.4f} / {v['vessel_dice']:.3f}" for v in (by_method[m] for m in methods)]
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
        for label, f in summary.get("fthnet", {}).items():
            lines.append(f"\nFTHNet score on {label} inputs (n={f['n']}): {f['before']:.1f} -> {f['after']:.1f} "
                         f"(mean change {f['mean_change']:+.2f}; rose for {f['share_rose']:.0%}, fell by over 1 point "
                         f"for {f['share_fell_over_1']:.0%}; no field of view for FTHNet: {f.get('unscored_before', 0)} "
                         f"inputs, {f.get('unscored_after', 0)} outputs)")  # fmt: skip
        for method, note in summary.get("notes", {}).items():
            lines.append(f"\n{method}: {note}")
        return "\n".join(lines)
    lines = ["| | accuracy | kappa (quadratic) | macro precision | macro F1 | n |", "|---|---:|---:|---:|---:|---:|"]
    for who, r in summary["results"].items():
        lines.append(f"| {who} | {r['accuracy']:.3f} | {r['kappa']:.3f} | {r['macro_precision']:.3f} | {r['macro_f1']:.3f} | {r['n']} |")
    return "\n".join(lines)
