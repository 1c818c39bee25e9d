"""IETK-Ret as an enhancement baseline (Gaudio et al., "Enhancement of Retinal Fundus Images via Pixel Color
Amplification", ICIAR 2020; PyPI ``ietk-ret`` 0.1.1, Apache-2.0): its brighten-darken method 'A+B+X'
(ietk.methods.brighten_darken), the one its authors put forward for enhancing fundus photos.

IETK-Ret needs OpenCV's contrib build (``cv2.ximgproc``), which replaces the headless OpenCV pyfundus uses,
and its declared dependencies pull the GUI OpenCV; so it lives in an environment of its own:

    python -m venv ietk-env && ietk-env/bin/pip install numpy scipy scikit-image matplotlib opencv-contrib-python-headless
    ietk-env/bin/pip install --no-deps ietk-ret==0.1.1

and ``pyfundus eval --task enhance --ietk-python ietk-env/bin/python`` (or ``$PYFUNDUS_IETK_PYTHON``) runs this
file with that interpreter, handing images over as .npy files. This file imports nothing from pyfundus, so
it runs there as a script: ``python ietk_baseline.py IN_DIR OUT_DIR`` enhances every IN_DIR/NAME.npy (float RGB
in [0, 1]) inside IN_DIR/NAME.mask.npy and writes OUT_DIR/NAME.npy, clipped to [0, 1] (its output may leave it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

METHOD = "A+B+X"


def ietk_enhance(image01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from ietk import methods

    enhanced = methods.brighten_darken(image01.astype(np.float32), METHOD, focus_region=mask.astype(bool))
    return np.clip(np.nan_to_num(enhanced), 0.0, 1.0).astype(np.float32)


def main(argv: list[str]) -> int:
    source, target = Path(argv[0]), Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.npy")):
        if path.name.endswith(".mask.npy"):
            continue
        mask = np.load(path.with_name(path.stem + ".mask.npy"))
        np.save(target / path.name, ietk_enhance(np.load(path), mask))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
