"""The CLEAQ-DR paper's ablations on the synthetic DR proxy, in one run: Table V (DR grading alone, with IQA, with
IQE, and all three jointly) and Table VI (IQA with and without LQI-IQA).

    pyfundus data build-pairs --synthetic 320 --variants 2 --dr-proxy --seed 10 --out dr-train
    pyfundus data build-pairs --synthetic 100 --variants 2 --dr-proxy --seed 20 --out dr-test
    OMP_NUM_THREADS=1 python scripts/cleaq_ablations.py --train dr-train --test dr-test --out runs/ablations

Stages as in the paper: the quality network and the enhancer are pre-trained first, and every grading variant
that includes one of them starts from the same pre-trained weights; the grader starts from scratch in all four
(no ImageNet weights here). Each run is pyfundus.collab's, with the reduced CPU networks at --img-size; the last
weights are evaluated (the test set picks nothing). A finished run is not trained again, so an interrupted
script continues where it stopped. Results are on synthetic fundi and say so: tables.md, results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pyfundus.cleaq_eval import evaluate_grader, evaluate_iqa
from pyfundus.collab import CleaqTrainConfig, train_cleaq

TABLE_V = (
    ("dr", "DR grading alone", {"task": "dr"}, {}),
    ("dr_iqa", "DR + IQA", {"task": "joint", "iqe": False}, {"iqa": "iqa"}),
    ("dr_iqe", "DR + IQE", {"task": "joint", "iqa": False}, {"iqe": "iqe"}),
    ("joint", "DR + IQA + IQE, joint (CLEAQ-DR)", {"task": "joint"}, {"iqa": "iqa", "iqe": "iqe"}),
)
TABLE_VI = (("iqa_no_lqi", "C-IQA alone", {"task": "iqa", "lqi": False}), ("iqa", "C-IQA + LQI-IQA", {"task": "iqa"}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="a pyfundus build-pairs --dr-proxy folder")
    parser.add_argument("--test", required=True, help="another one, of other synthetic fundi")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    common = {"data": [args.train], "setting": "cpu", "img_size": args.img_size, "steps": args.steps,
              "batch_size": args.batch_size, "eval_every": args.steps, "seed": args.seed}  # fmt: skip

    def run(name: str, options: dict, init: dict[str, str] | None = None) -> Path:
        out = args.out / name
        final = out / "model.safetensors"
        if not final.exists():
            resume = (out / "state.safetensors").exists()
            parts = {part: str(args.out / source / "model.safetensors") for part, source in (init or {}).items()}
            train_cleaq(CleaqTrainConfig(out=str(out), init=parts, **common, **options), resume=resume)
        return final

    results: dict[str, dict] = {"table_vi": {}, "table_v": {}}
    for name, label, options in TABLE_VI:
        summary = evaluate_iqa(str(run(name, options)), args.test, args.out / "eval" / name, compare_fthnet=False)
        results["table_vi"][label] = summary["results"]["C-IQA"]
    run("iqe", {"task": "iqe"})
    for name, label, options, init in TABLE_V:
        summary = evaluate_grader(str(run(name, options, init)), args.test, args.out / "eval" / name)
        results["table_v"][label] = summary["results"]["all"]
    results["setting"] = {**common, "test": args.test, "minutes": round((time.perf_counter() - started) / 60, 1)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (args.out / "tables.md").write_text(tables(results))
    print(tables(results))
    return 0


def tables(results: dict) -> str:
    s = results["setting"]
    lines = [
        f"Synthetic DR proxy (grades 0-3 from lesion counts), reduced CPU setting: {s['img_size']} px, ResNets at "
        f"width 0.25, {s['steps']} steps of batch {s['batch_size']} per run; test: {s['test']}. SYNTHETIC DATA.",
        "",
        "Table V (DR grading) | accuracy | kappa (quadratic) | macro F1",
        "---|---:|---:|---:",
    ]
    lines += [f"{k} | {v['accuracy']:.3f} | {v['kappa']:.3f} | {v['macro_f1']:.3f}" for k, v in results["table_v"].items()]
    lines += ["", "Table VI (quality, Good/Usable/Reject) | accuracy | kappa (quadratic) | macro F1", "---|---:|---:|---:"]
    lines += [f"{k} | {v['accuracy']:.3f} | {v['kappa']:.3f} | {v['macro_f1']:.3f}" for k, v in results["table_vi"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
