"""Turn a training run's model.safetensors into the weights file that ships in the package.

    python scripts/release_weights.py runs/default-model/run4/model.safetensors pyfundus/weights/fthnet_s.safetensors
    python scripts/release_weights.py runs/iqe/model.safetensors pyfundus/weights/cleaq_iqe_cpu.safetensors

Floating-point tensors are stored as fp16 (half the download; the model upcasts them
to fp32 when it loads), the config gains a description pointing at its model card, and
the release is refused if storing in fp16 moves any real sample photo's score by
MAX_SCORE_CHANGE or more (a quality model), or any pixel of an enhanced sample photo by more
than MAX_PIXEL_CHANGE grey levels (an enhancer). Prints the file's sha256 for the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from pyfundus.api import load_enhancer, load_model, task_of
from pyfundus.data.samples import sample_paths
from pyfundus.weights import load_weights

MAX_SCORE_CHANGE = 0.05  # 0-100 scale, the same bar as the fp32 export parity
MAX_PIXEL_CHANGE = 1  # grey levels: the rounding of the output itself
DESCRIPTION = "FTHNet-S trained on FQS-proxy data built from CC0/CC-BY fundus photos; see MODEL_CARD.md"
ENHANCER_DESCRIPTION = (
    "CLEAQ-DR enhancer (reduced CPU setting) trained on degrade-restore pairs of CC0/CC-BY fundus photos and "
    "synthetic fundi; see docs/model_card/cleaq_iqe_cpu.md"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="model.safetensors written by pyfundus train")
    parser.add_argument("dest", type=Path, help="where the release file goes")
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    state, config = load_weights(args.source)
    enhancer = task_of(args.source) == "enhance"
    config.description = ENHANCER_DESCRIPTION if enhancer else DESCRIPTION
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(half, str(args.dest), metadata={"pyfundus": config.to_json()})

    photos = sample_paths()
    with torch.inference_mode():
        if enhancer:
            full, stored = (load_enhancer(path).enhance(photos, keep_pixels=True) for path in (args.source, args.dest))
            change = max(int(np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max()) for a, b in zip(full, stored)
                         if a.error is None and b.error is None)  # fmt: skip
            limit, what, unit = MAX_PIXEL_CHANGE + 1, "pixel change", "grey levels of an enhanced photo"
        else:
            full, stored = load_model(args.source).score(photos), load_model(args.dest).score(photos)
            change = max(abs(a.score - b.score) for a, b in zip(full, stored) if a.ok and b.ok)
            limit, what, unit = MAX_SCORE_CHANGE, "score change", "score points"
    print(f"largest {what} from fp16 storage over {len(photos)} sample photos: {change:.4f} {unit}")
    if change >= limit:
        args.dest.unlink()
        print(f"refused: at least {limit}; {args.dest} removed", file=sys.stderr)
        return 1
    digest = hashlib.sha256(args.dest.read_bytes()).hexdigest()
    print(f"{args.dest}: {args.dest.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
