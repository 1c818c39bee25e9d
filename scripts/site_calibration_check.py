"""How much per-camera thresholds help: for each source photo in a `pyfundus eval` predictions.csv, fit thresholds
on half its graded variants (even rows) and grade the other half (odd rows) with them and with the stored ones.

    python scripts/site_calibration_check.py eval-fthnet/predictions.csv --stored 43 62

This is what `pyfundus calibrate` does for a site, simulated with proxy grades (MODEL_CARD.md, "Thresholds").
"""

from __future__ import annotations

import argparse
import csv

from pyfundus.grading import Thresholds
from pyfundus.metrics import accuracy, calibrate_thresholds, quadratic_weighted_kappa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", help="predictions.csv written by pyfundus eval")
    parser.add_argument("--stored", nargs=2, type=float, default=(43.0, 62.0), metavar=("REJECT_BELOW", "GOOD_FROM"))
    args = parser.parse_args()
    stored = Thresholds(*args.stored)
    rows = [r for r in csv.DictReader(open(args.predictions, newline="")) if r["score"] and r["true_class"]]
    pooled: dict[str, list[tuple[str, str]]] = {"stored": [], "per camera": []}
    print("source | fitted on | graded | per-camera thresholds | accuracy stored -> per camera | kappa stored -> per camera")
    for source in sorted({r["source_id"] for r in rows}):
        variants = [r for r in rows if r["source_id"] == source]
        fit, held = variants[0::2], variants[1::2]
        site = calibrate_thresholds([float(r["score"]) for r in fit], [r["true_class"] for r in fit])
        truth = [r["true_class"] for r in held]
        with_stored = [stored.classify(float(r["score"])) for r in held]
        with_site = [site.classify(float(r["score"])) for r in held]
        pooled["stored"] += zip(with_stored, truth)
        pooled["per camera"] += zip(with_site, truth)
        print(f"{source} | {len(fit)} | {len(held)} | {site.reject_below:g} / {site.good_from:g} | "
              f"{accuracy(with_stored, truth):.2f} -> {accuracy(with_site, truth):.2f} | "
              f"{quadratic_weighted_kappa(with_stored, truth):.2f} -> {quadratic_weighted_kappa(with_site, truth):.2f}")
    for name, pairs in pooled.items():
        predicted, truth = zip(*pairs)
        print(f"all, {name}: {len(pairs)} graded, accuracy {accuracy(predicted, truth):.3f}, "
              f"kappa {quadratic_weighted_kappa(predicted, truth):.3f}")


if __name__ == "__main__":
    main()
