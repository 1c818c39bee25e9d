"""Training: `pyfundus train` and ``train(TrainConfig)``.

The FTHNet recipe (Gong et al., arXiv:2411.12273, and its BasiQA code): Adam, linear warm-up then linear
annealing, smooth L1 on MOS/100, flips and random crops, an EMA of the weights,
the hypernetwork on a smaller learning rate. Optional heads: a 3-way class head
(cross-entropy) and a cause head that predicts each degradation cause's
severity (binary cross-entropy on soft targets), so a verdict can say why.

Outputs in ``out``: ``model.safetensors`` (EMA weights, calibrated thresholds,
the training record in its metadata: what `load_model` reads), ``best.safetensors``
(best validation SRCC), ``state.safetensors`` (everything `--resume` needs),
``metrics.json`` (the validation history).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import load_training_state, save_training_state
from .data.datasets import QualityRecord, load_records, train_val_split
from .grading import Thresholds
from .io import ImageReadError, read_image
from .models import create_model
from .preprocess import NoFundusError, crop_to_field_of_view, find_field_of_view, preprocess, to_model_input
from .progress import progress_bar
from .verdicts import CAUSES, CLASSES
from .weights import InputSpec, ModelConfig, load_weights, save_weights

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"


@dataclass
class TrainConfig:
    data: list[str]  # folders in the FQS layout (labels.csv + images/), used together
    out: str = "runs/train"
    model: str = "fthnet_s"
    model_kwargs: dict = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 100
    hyper_lr_ratio: float = 0.1  # the hypernetwork learns 10x slower than the backbone (BasiQA)
    loss: Literal["smooth_l1", "l1", "l2"] = "smooth_l1"
    class_weight: float = 0.0  # > 0 adds the 3-way class head
    cause_weight: float = 0.0  # > 0 adds the cause head (needs proxy data with recorded causes)
    ema_decay: float = 0.99
    amp: Literal["bf16", "off"] = "bf16"
    val_fraction: float = 0.1
    split_seed: int = 0
    val_data: list[str] = field(default_factory=list)  # validation folders instead of a split of ``data``
    eval_every: int = 200
    seed: int = 0
    device: str = "cpu"
    crop_jitter: float = 0.15  # train crops take 1/(1+jitter)..1 of the field of view's side
    camera_looks: bool = False  # a fresh random camera rendering per training image (see _camera_render)
    rotations: bool = False  # each training image turned by a random angle (see _rotated)
    init_from: str | None = None  # start from these weights (safetensors of the same architecture and heads)

    def __post_init__(self):
        if self.loss not in ("smooth_l1", "l1", "l2"):
            raise ValueError(f"loss must be smooth_l1, l1 or l2, not {self.loss!r}")
        if self.amp not in ("bf16", "off"):
            raise ValueError(f"amp must be bf16 or off, not {self.amp!r}")


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> Path:
    """Train a model and return the path of the final ``model.safetensors``.

    ``stop_at`` ends this run early at that step with its state saved (a time-boxed
    session on a shared machine); ``resume=True`` later continues the same schedule.
    Returns the state file's path in that case.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    records = [record for folder in config.data for record in load_records(folder)]
    if config.val_data:
        train_set = records
        val_set = [record for folder in config.val_data for record in load_records(folder)]
        shared = {r.source_id for r in train_set} & {r.source_id for r in val_set}
        if shared:
            raise ValueError(f"validation data shares source photos with the training data: {sorted(shared)[:5]}")
    else:
        train_set, val_set = train_val_split(records, config.val_fraction, config.split_seed)
    if not train_set or not val_set:
        raise ValueError(f"{', '.join(config.data)}: need images from several source photos for a train/validation split")
    causes = list(CAUSES) if config.cause_weight > 0 else []
    kwargs = {**config.model_kwargs, "num_classes": 3 if config.class_weight > 0 else 0, "num_causes": len(causes)}
    model = create_model(config.model, **kwargs).to(config.device)
    if config.init_from:
        _init_from(model, config.init_from)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(_param_groups(model, config))
    history: list[dict] = []
    start = 0
    if resume:
        start, history = _load_state(out / STATE_FILE, model, ema, optimizer)
        log.info("resuming at step %d", start)
    spec = model.input_spec
    loader = _BatchLoader(train_set, config, causes, spec)
    best = max((h["srcc"] for h in history if not math.isnan(h["srcc"])), default=-1.0)
    model.train()
    with progress_bar(config.steps, initial=start, desc="training", unit="step", enabled=progress) as bar:
        for step in range(start, min(config.steps, stop_at or config.steps)):
            images, quality, levels, cause_targets = loader.batch(step)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * _lr_factor(step, config)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp == "bf16"):
                outputs = model.forward_with_heads(images.to(config.device))
            loss = _loss(outputs, quality, levels, cause_targets, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _update_ema(ema, model, config.ema_decay)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                metrics = {"step": step + 1, **_validate(ema, val_set, config, spec)}
                history.append(metrics)
                bar.set_postfix(loss=f"{loss.item():.4f}", val_srcc=f"{metrics['srcc']:.3f}", val_plcc=f"{metrics['plcc']:.3f}")
                if metrics["srcc"] > best:
                    best = metrics["srcc"]
                    save_weights(ema, out / "best.safetensors", _model_config(config, kwargs, spec, causes, history, None))
                _save_state(out / STATE_FILE, model, ema, optimizer, step + 1, history)
                (out / "metrics.json").write_text(json.dumps(history, indent=2))
                model.train()
    loader.close()
    if stop_at is not None and stop_at < config.steps:
        _save_state(out / STATE_FILE, model, ema, optimizer, stop_at, history)
        return out / STATE_FILE
    thresholds = _calibrate(ema, val_set, config, spec)
    final = save_weights(ema, out / "model.safetensors", _model_config(config, kwargs, spec, causes, history, thresholds))
    log.info("saved %s", final)
    return final


def fit_classical(
    name: str,
    records: list[QualityRecord],
    out_dir: str | Path,
    *,
    workers: int = 2,
    progress: bool = True,
    feature_cache: dict | None = None,
) -> tuple[object, Path]:
    """Fit a registered classical model (the BRISQUE baseline) on ``records`` and save ``OUT_DIR/NAME.json``.

    ``feature_cache``: a dict shared between fits (evaluation rounds), so each image is measured once.
    Returns the fitted model and the file.
    """
    model = create_model(name, workers=workers, feature_cache=feature_cache)
    total = sum(r.mos is not None for r in records)
    with progress_bar(total, desc=f"{name} features", unit="img", enabled=progress) as bar:
        model.fit(records, workers=workers, progress=bar.update)
    out = Path(out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)  # so the fitted model can be re-run without refitting
    return model, out


def _init_from(model: torch.nn.Module, path: str) -> None:
    state, _ = load_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit this model (missing {len(missing)} tensors, e.g. {missing[:2]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:2]}): same architecture and heads needed"
        )
    log.info("initialised from %s", path)


# ---- data -------------------------------------------------------------------


class _BatchLoader:
    """Deterministic batches: the images of step k depend only on (seed, k), so a resumed run sees the same data.

    The next batch is read in a background thread while the current one trains.
    """

    def __init__(self, records: list[QualityRecord], config: TrainConfig, causes: list[str], spec: InputSpec):
        self.records, self.config, self.causes, self.spec = records, config, causes, spec
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyfundus-batch")
        self.pending: dict[int, object] = {}
        self.skipped: set[int] = set()

    def batch(self, step: int):
        future = self.pending.pop(step, None) or self.pool.submit(self._make, step)
        self.pending[step + 1] = self.pool.submit(self._make, step + 1)
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _make(self, step: int):
        n, size = len(self.records), self.config.batch_size
        epoch, offset = divmod(step * size, n)
        indices = [int(i) for i in _epoch_order(self.config.seed, epoch, n)[offset : offset + size]]
        if len(indices) < size:  # wrap into the next epoch's order
            indices += [int(i) for i in _epoch_order(self.config.seed, epoch + 1, n)[: size - len(indices)]]
        rng = np.random.default_rng([self.config.seed, step])
        images, quality, levels, causes = [], [], [], []
        for index in indices:
            record = self.records[index]
            image = self._augmented(record, rng)
            if image is None:
                continue
            images.append(image)
            quality.append(record.mos / 100.0)
            levels.append(CLASSES.index(record.level) if record.level else -100)
            causes.append([record.causes.get(c, 0.0) for c in self.causes])
        return (
            torch.from_numpy(np.stack(images)),
            torch.tensor(quality, dtype=torch.float32),
            torch.tensor(levels, dtype=torch.long),
            torch.tensor(causes, dtype=torch.float32).reshape(len(images), len(self.causes)),
        )

    def _augmented(self, record: QualityRecord, rng: np.random.Generator) -> np.ndarray | None:
        """FOV crop (turned by a random angle with rotations), random crop of 1/(1+jitter)..1 of its side,
        resize, random flips (and camera renderings)."""
        try:
            square = _fov_square(record.path, self.spec.size)
        except (ImageReadError, NoFundusError) as exc:
            if id(record) not in self.skipped:
                self.skipped.add(id(record))
                log.warning("skipping a training image: %s", exc)
            return None
        if self.config.rotations:
            square = _rotated(square, rng)
        side = square.shape[0]
        crop = int(round(side / (1.0 + rng.uniform(0.0, self.config.crop_jitter))))
        y, x = rng.integers(0, side - crop + 1, size=2)
        patch = Image.fromarray(square[y : y + crop, x : x + crop])
        patch = np.asarray(patch.resize((self.spec.size,) * 2, Image.Resampling.BILINEAR))
        if self.config.camera_looks:
            patch = _camera_render(patch, rng)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        return to_model_input(np.ascontiguousarray(patch), self.spec)


def _camera_render(square: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``square`` as another camera might have captured it, same label: a fresh random
    :class:`~pyfundus.data.camera.Camera` (colour, tone, optics, storage, a 4:3 frame on half the
    draws) every time the image is drawn. With a handful of source photos, how their cameras
    rendered them otherwise identifies them, and the model learns "looks like my training photos"
    instead of "is degraded".
    """
    from .data.camera import Camera

    return Camera.draw(rng).render(square)


def _rotated(square: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``square`` (a field-of-view crop) turned about its centre by an angle drawn from [0, 360), same label.

    With a handful of source photos, the layout (disc left or right, where the arcades run)
    identifies each one as well as its colour does; the flips alone give four layouts per
    photo. The circle of view stays inside the square, so only black corners move out. Turned
    at the crop's own resolution, before the resize to the model's input, so the resampling
    blur is below what the model sees.
    """
    import cv2

    side = square.shape[0]
    centre = (side - 1) / 2.0
    turn = cv2.getRotationMatrix2D((centre, centre), float(rng.uniform(0.0, 360.0)), 1.0)
    return cv2.warpAffine(square, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _fov_square(path, min_side: int) -> np.ndarray:
    rgb = read_image(path, min_side=min_side).pixels
    return crop_to_field_of_view(rgb, find_field_of_view(rgb))


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


# ---- optimisation -----------------------------------------------------------


def _param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    hyper = [p for n, p in model.named_parameters() if n.startswith("hypernet.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("hypernet.")]
    groups = [{"params": rest, "lr": config.lr, "base_lr": config.lr}]
    if hyper:
        lr = config.lr * config.hyper_lr_ratio
        groups.append({"params": hyper, "lr": lr, "base_lr": lr})
    return groups


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    remaining = config.steps - config.warmup_steps
    return max(0.0, 1.0 - (step - config.warmup_steps) / max(1, remaining))


def _loss(outputs, quality, levels, cause_targets, config: TrainConfig) -> torch.Tensor:
    predicted = outputs["quality"].float()
    regression = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss, "l2": F.mse_loss}[config.loss]
    loss = regression(predicted, quality)
    if "class_logits" in outputs and (levels >= 0).any():
        loss = loss + config.class_weight * F.cross_entropy(outputs["class_logits"].float(), levels, ignore_index=-100)
    if "cause_logits" in outputs:
        loss = loss + config.cause_weight * F.binary_cross_entropy_with_logits(
            outputs["cause_logits"].float(), cause_targets
        )
    return loss


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for target, source in zip(ema.parameters(), model.parameters()):
        target.lerp_(source, 1.0 - decay)


# ---- validation and calibration ---------------------------------------------


@torch.no_grad()
def _predict(
    model: torch.nn.Module, records: list[QualityRecord], config: TrainConfig, spec: InputSpec
) -> tuple[np.ndarray, list]:
    """Scores 0-100 with the inference preprocessing (whole FOV, no crop), and the records they belong to."""
    model.eval()
    scores, kept = [], []
    for start in range(0, len(records), 16):
        batch, batch_records = [], []
        for record in records[start : start + 16]:
            try:
                rgb = read_image(record.path, min_side=spec.size).pixels
                batch.append(preprocess(rgb, spec)[0])
                batch_records.append(record)
            except (ImageReadError, NoFundusError):
                continue
        if not batch:
            continue
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp == "bf16"):
            quality = model(torch.from_numpy(np.stack(batch)).to(config.device))
        scores.extend((quality.float().cpu() * 100).tolist())  # unclamped: ranks stay informative early on
        kept.extend(batch_records)
    return np.asarray(scores), kept


def _validate(model, records, config, spec) -> dict:
    from .metrics import plcc, rmse, srcc

    started = time.perf_counter()
    scores, kept = _predict(model, records, config, spec)
    targets = np.asarray([r.mos for r in kept])
    return {
        "srcc": float(srcc(scores, targets)),
        "plcc": float(plcc(scores, targets)),
        "rmse": float(rmse(scores, targets)),
        "n": len(kept),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _calibrate(model, records, config, spec) -> Thresholds | None:
    """Class thresholds fitted on the validation images; None when they carry no classes."""
    from .metrics import calibrate_thresholds

    scores, kept = _predict(model, records, config, spec)
    labelled = [(s, r.level) for s, r in zip(scores, kept) if r.level]
    if len({level for _, level in labelled}) < 3:
        log.warning("validation data lacks some classes: keeping the default thresholds (uncalibrated)")
        return None
    return calibrate_thresholds(np.array([s for s, _ in labelled]), [level for _, level in labelled])


def _model_config(config, kwargs, spec, causes, history, thresholds) -> ModelConfig:
    return ModelConfig(
        arch=config.model,
        arch_kwargs=kwargs,
        input=spec,
        thresholds=thresholds or Thresholds(),
        trained=True,
        causes=causes,
        description=f"{config.model} trained by pyfundus train on {', '.join(Path(d).name for d in config.data)}",
        training={"config": asdict(config), "validation": history[-1] if history else {}},
    )


# ---- resumable state ----------------------------------------------------------


def _save_state(path: Path, model, ema, optimizer, step: int, history: list[dict]) -> None:
    save_training_state(path, {"model": model, "ema": ema}, optimizer, {"step": str(step), "history": json.dumps(history)})


def _load_state(path: Path, model, ema, optimizer) -> tuple[int, list[dict]]:
    record = load_training_state(path, {"model": model, "ema": ema}, optimizer)
    return int(record["step"]), json.loads(record["history"])
