"""Training CLEAQ-DR: ``pyfundus train --task iqe|iqa|dr|joint`` and :func:`train_cleaq`.

Hou et al., "Image Quality Assessment Guided Collaborative Learning of Image Enhancement and Classification
for Diabetic Retinopathy Grading", IEEE JBHI 2023. The paper trains in three stages:

1. ``--task iqa``: pre-train the quality network (C-IQA + LQI-IQA) on low-quality images:
   cross-entropy on the quality class + ``lqi_weight`` x MSE of the reconstruction, inside the retinal mask.
2. ``--task iqe``: pre-train the enhancer (U-IQE + Seg-IQE) on degrade-restore pairs: L2 to the clean image
   inside the retinal mask + ``dice_weight`` x Dice of the vessel map (0.1, as the authors' code weights it).
3. ``--task joint``: all three together (``pyfundus.models.cleaq``): L_DR + w_IQE L_IQE + w_IQA L_IQA, the IQA
   behind a gradient-reversal layer, each part initialised from the earlier stages with ``--init``.

``--task dr`` trains the grader alone (the baseline row of the paper's Table V). Every part is switchable
for the ablations: ``iqe``/``iqa`` (joint without them), ``segmentation``, ``lqi``, ``gradient_reversal``,
``dynamic_weights``, ``quality_fusion``.

**Dynamic task weights** (per batch): w_k = L_k(t) / L_k(0) for k in {IQE, IQA}, the ratio of the task's loss
on this batch to its loss on the first batch that had it (detached, at most 10). A task that has learnt much
counts less, one that has not (or that the adversary pushes back up) counts more; the grading loss keeps
weight 1. With ``dynamic_weights=False`` every weight is 1.

**Optimiser**: Adam (lr 1e-3 in the paper), constant for the first ``constant_fraction`` of the steps (the
paper: 60 of 150 epochs), then poly decay, lr x (1 - t)^0.9. bf16 autocast where the CPU computes bf16
natively (``amp="auto"``) or on CUDA.

**Sizes**: ``setting="paper"`` builds the paper's networks (512 px, full widths: for a GPU);
``setting="cpu"`` the reduced ones this repository trains on CPU (``cleaq_iqe_cpu`` etc.; every figure from
them says so). ``img_size`` and ``width`` override either. No ImageNet weights are shipped or fetched: the
paper initialised from ImageNet, here the networks start from scratch unless ``init`` gives weights
(a pyfundus model of the part, or a plain ResNet-34/50 state dict in safetensors for its backbone).

Outputs in ``out``: ``model.safetensors`` (the trained network: an enhancer for ``iqe``, a quality classifier
for ``iqa``, a grader for ``dr`` and ``joint``), ``enhancer.safetensors`` (joint with IQE: the enhancer
alone, for ``pyfundus enhance``), ``best.safetensors`` (best validation figure), ``state.safetensors``
(``resume=True`` continues exactly), ``metrics.json`` and ``training.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import load_training_state, save_training_state
from .data.cleaq import CleaqRecord, field_mask, load_cleaq
from .data.datasets import split_records
from .io import read_image
from .models import create_model
from .preprocess import crop_to_field_of_view, find_field_of_view
from .progress import progress_bar
from .verdicts import CLASSES
from .weights import ModelConfig, load_weights, save_weights

log = logging.getLogger(__name__)

__all__ = ["SETTINGS", "TASKS", "CleaqTrainConfig", "TaskWeights", "poly_lr_factor", "train_cleaq"]

TASKS = ("iqe", "iqa", "dr", "joint")
SETTINGS = {
    "paper": {"iqe": "cleaq_iqe", "iqa": "cleaq_iqa", "dr": "cleaq_dr"},
    "cpu": {"iqe": "cleaq_iqe_cpu", "iqa": "cleaq_iqa_cpu", "dr": "cleaq_dr_cpu"},
}
STATE_FILE = "state.safetensors"
MAX_TASK_WEIGHT = 10.0
MAX_VALIDATION_IMAGES = 200
IGNORE = -100


@dataclass
class CleaqTrainConfig:
    task: str
    data: list[str]
    out: str = "runs/cleaq"
    setting: str = "cpu"
    img_size: int | None = None  # every part's input size, instead of the setting's
    width: float | None = None  # the ResNets' width multiplier, instead of the setting's
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    constant_fraction: float = 0.4
    poly_power: float = 0.9
    crop: int | None = None  # iqe: train on random crops of this side (U-IQE and Seg-IQE are convolutional)
    dice_weight: float = 0.1
    lqi_weight: float = 1.0
    segmentation: bool = True
    lqi: bool = True
    iqe: bool = True  # joint: with the enhancer
    iqa: bool = True  # joint: with the quality network
    gradient_reversal: bool = True
    reversal_weight: float = 1.0
    dynamic_weights: bool = True
    quality_fusion: bool = True
    init: dict[str, str] = field(default_factory=dict)  # part ("iqe", "iqa", "dr" or "model") -> safetensors
    val_data: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    split_seed: int = 0
    eval_every: int = 200
    seed: int = 0
    amp: str = "auto"
    device: str = "cpu"
    pairs_on_the_fly: bool = True  # outside data: degrade its Good/Usable photos into pairs, as the paper

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, not {self.setting!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, not {self.amp!r}")
        unknown = set(self.init) - {"iqe", "iqa", "dr", "model"}
        if unknown:
            raise ValueError(f"init: unknown part(s) {sorted(unknown)}; use iqe, iqa, dr or model")
        if self.task == "joint" and not (self.iqe or self.iqa):
            log.info("joint training without IQE and IQA is the grader alone")


def poly_lr_factor(step: int, steps: int, constant_fraction: float, power: float) -> float:
    """1 for the first ``constant_fraction`` of the steps, then (1 - t)^power as t runs from 0 to 1."""
    start = int(constant_fraction * steps)
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(1, steps - start)) ** power


class TaskWeights:
    """CLEAQ-DR's dynamic task weights: w_k = L_k(t) / L_k(0), capped at MAX_TASK_WEIGHT; "dr" keeps 1."""

    def __init__(self, enabled: bool = True, initial: dict[str, float] | None = None):
        self.enabled = enabled
        self.initial: dict[str, float] = dict(initial or {})

    def __call__(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        weights = {}
        for name, loss in losses.items():
            value = float(loss.detach())
            self.initial.setdefault(name, max(value, 1e-8))
            if name == "dr" or not self.enabled:
                weights[name] = 1.0
            else:
                weights[name] = min(MAX_TASK_WEIGHT, value / self.initial[name])
        return weights


# ---- the run ------------------------------------------------------------------------


def train_cleaq(config: CleaqTrainConfig, *, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> Path:
    """Train and return the path of ``model.safetensors`` (of ``state.safetensors`` when stopped early)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    dataset = _load(config.data)
    if config.val_data:
        val_set = _load(config.val_data).records
        train_set = dataset.records
        shared = {r.source_id for r in train_set} & {r.source_id for r in val_set}
        if shared:
            raise ValueError(f"validation data shares source photos with the training data: {sorted(shared)[:5]}")
    else:
        split = split_records(dataset.records, seed=config.split_seed, fractions=(1 - config.val_fraction, 0.0, config.val_fraction))
        train_set, val_set = split["train"], split["val"]
    _check_labels(config, dataset, train_set)
    train_set, val_set = [r for r in train_set if _has_target(r, config)], [r for r in val_set if _has_target(r, config)]
    if not train_set:
        raise ValueError(f"{', '.join(config.data)}: no training images")
    model, arch, kwargs = build_network(config, len(dataset.grades or ()))
    model.to(config.device)
    for part, path in config.init.items():
        _init_part(model, config.task, part, path)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    weights = TaskWeights(config.dynamic_weights)
    history: list[dict] = []
    start = 0
    if resume:
        start, history, weights.initial = _load_state(out / STATE_FILE, model, optimizer)
        log.info("resuming at step %d", start)
    size = model.input_spec.size
    loader = _Batches(train_set, config, size, training=True)
    best = max((h["score"] for h in history if h.get("score") is not None), default=-math.inf)
    amp = _amp_dtype(config)
    end = min(config.steps, stop_at or config.steps)
    model.train()
    with progress_bar(config.steps, initial=start, desc=f"training {config.task}", unit="step", enabled=progress) as bar:
        for step in range(start, end):
            batch = loader.batch(step)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * poly_lr_factor(step, config.steps, config.constant_fraction, config.poly_power)
            with torch.autocast(torch.device(config.device).type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                outputs = model.forward_with_heads(batch["image"].to(config.device))
            losses = task_losses(config, outputs, {k: v.to(config.device) for k, v in batch.items()})
            task_weight = weights(losses)
            total = sum(task_weight[name] * loss for name, loss in losses.items())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(
                loss=f"{float(total.detach()):.4f}",
                **{f"w_{k}": f"{w:.2f}" for k, w in task_weight.items() if k != "dr" and config.task == "joint"},
                refresh=False,
            )
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                record = {"step": step + 1, "loss": float(total.detach()), **{f"loss_{k}": float(v.detach()) for k, v in losses.items()},
                          **{f"weight_{k}": w for k, w in task_weight.items()}}  # fmt: skip
                record.update(validate(model, config.task, val_set, config, size, dataset.grades))
                history.append(record)
                if record.get("score") is not None and record["score"] > best:
                    best = record["score"]
                    _save(model, out / "best.safetensors", config, arch, kwargs, dataset, history)
                _save_state(out / STATE_FILE, model, optimizer, step + 1, history, weights.initial)
                (out / "metrics.json").write_text(json.dumps(history, indent=2))
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.startswith("val_")}, refresh=False)
                model.train()
    loader.close()
    if end < config.steps:
        _save_state(out / STATE_FILE, model, optimizer, end, history, weights.initial)
        return out / STATE_FILE
    final = _save(model, out / "model.safetensors", config, arch, kwargs, dataset, history)
    if config.task == "joint" and getattr(model, "iqe", None) is not None:
        part = kwargs["iqe"]
        enhancer_config = ModelConfig(arch=part["arch"], arch_kwargs=part["kwargs"], input=model.iqe.input_spec,
                                      trained=True, description="CLEAQ-DR enhancer, trained jointly with the grader",
                                      training={"config": asdict(config), "validation": history[-1] if history else {}})  # fmt: skip
        save_weights(model.iqe, out / "enhancer.safetensors", enhancer_config)
    _plot_history(history, out / "training.png", config.task)
    return final


def build_network(config: CleaqTrainConfig, num_grades: int) -> tuple[torch.nn.Module, str, dict]:
    """The network for ``config.task``, its registered name and its arguments (as the saved config holds them)."""
    archs = SETTINGS[config.setting]

    def part(name: str, **extra) -> dict:
        kwargs = dict(extra)
        if config.img_size is not None:
            kwargs["img_size"] = config.img_size
        if config.width is not None:
            kwargs["seg_width" if name == "iqe" else "width"] = config.width
        return {"arch": archs[name], "kwargs": kwargs}

    if config.task == "iqe":
        spec = part("iqe", segmentation=config.segmentation)
        return create_model(spec["arch"], **spec["kwargs"]), spec["arch"], spec["kwargs"]
    if config.task == "iqa":
        spec = part("iqa", lqi=config.lqi)
        return create_model(spec["arch"], **spec["kwargs"]), spec["arch"], spec["kwargs"]
    if num_grades < 2:
        raise ValueError("DR grading needs data with DR grades (EyeQ, Messidor, APTOS, or pyfundus data build-pairs --dr-proxy)")
    joint = config.task == "joint"
    kwargs = {
        "dr": part("dr", num_classes=num_grades),
        "iqe": part("iqe", segmentation=config.segmentation) if joint and config.iqe else None,
        "iqa": part("iqa", lqi=config.lqi) if joint and config.iqa else None,
        "gradient_reversal": config.gradient_reversal,
        "reversal_weight": config.reversal_weight,
        "quality_fusion": config.quality_fusion,
    }
    return create_model("cleaq", **kwargs), "cleaq", kwargs


def _load(folders: list[str]):
    datasets = [load_cleaq(folder) for folder in folders]
    grades = {d.grades for d in datasets if d.grades}
    if len(grades) > 1:
        raise ValueError(f"these datasets grade DR on different scales ({sorted(len(g) for g in grades)} grades): train on one")
    first = datasets[0]
    first.records = [r for d in datasets for r in d.records]
    first.grades = next(iter(grades), None)
    return first


def _check_labels(config: CleaqTrainConfig, dataset, records: list[CleaqRecord]) -> None:
    if config.task in ("dr", "joint") and not any(r.dr_grade is not None for r in records):
        raise ValueError("DR grading needs data with DR grades (EyeQ, Messidor, APTOS, or pyfundus data build-pairs --dr-proxy)")
    if config.task in ("iqa",) or (config.task == "joint" and config.iqa):
        if not any(r.quality for r in records):
            raise ValueError("quality training needs quality labels (Good/Usable/Reject): pyfundus tables or EyeQ")
    if config.task == "iqe" or (config.task == "joint" and config.iqe):
        pairs = any(r.clean for r in records) or (config.pairs_on_the_fly and any(r.quality in ("Good", "Usable") for r in records))
        if not pairs:
            raise ValueError("enhancement training needs pairs (pyfundus data build-pairs) or Good/Usable photos to degrade")


def _has_target(record: CleaqRecord, config: CleaqTrainConfig) -> bool:
    """Whether ``record`` gives any task of this run something to learn from."""
    pairs = record.clean is not None or (config.pairs_on_the_fly and record.quality in ("Good", "Usable"))
    wants = {
        "iqe": pairs,
        "iqa": record.quality is not None,
        "dr": record.dr_grade is not None,
        "joint": record.dr_grade is not None or (config.iqe and pairs) or (config.iqa and record.quality is not None),
    }
    return wants[config.task]


# ---- forward and losses ---------------------------------------------------------------


def task_losses(config: CleaqTrainConfig, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss of each task present in ``outputs`` whose targets the batch has: "iqe", "iqa", "dr"."""
    losses: dict[str, torch.Tensor] = {}
    mask = batch["mask"]
    if "enhanced" in outputs and batch["has_clean"].any():
        keep = batch["has_clean"]
        loss = masked_mse(outputs["enhanced"][keep].float(), batch["clean"][keep], mask[keep])
        if "vessel_logits" in outputs and batch["has_vessels"].any():
            vessels = batch["has_vessels"]
            loss = loss + config.dice_weight * dice_loss(outputs["vessel_logits"][vessels].float(), batch["vessels"][vessels], mask[vessels])
        losses["iqe"] = loss
    if "quality_logits" in outputs and (batch["quality"] != IGNORE).any():
        loss = F.cross_entropy(outputs["quality_logits"].float(), batch["quality"], ignore_index=IGNORE)
        if "reconstruction" in outputs:
            loss = loss + config.lqi_weight * masked_mse(outputs["reconstruction"].float(), batch["image"], mask)
        losses["iqa"] = loss
    if "dr_logits" in outputs and (batch["grade"] != IGNORE).any():
        losses["dr"] = F.cross_entropy(outputs["dr_logits"].float(), batch["grade"], ignore_index=IGNORE)
    if not losses:
        raise ValueError("this batch has no target for any task trained: check the labels")
    return losses


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the retinal mask's pixels (all channels)."""
    weight = mask.expand_as(prediction)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) and the vessel mask inside the retinal mask, averaged over images."""
    p = torch.sigmoid(logits) * mask
    t = target * mask
    overlap = (p * t).sum(dim=(1, 2, 3))
    return (1 - (2 * overlap + eps) / (p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3)) + eps)).mean()


# ---- validation ------------------------------------------------------------------------


@torch.no_grad()
def validate(model, task: str, records: list[CleaqRecord], config: CleaqTrainConfig, size: int, grades) -> dict[str, Any]:
    """Validation figures; "score" is the one the best checkpoint is chosen by (PSNR, quality or DR kappa)."""
    from .metrics import psnr, quadratic_weighted_kappa, ssim

    model.eval()
    started = time.perf_counter()
    loader = _Batches(records[:MAX_VALIDATION_IMAGES], config, size, training=False)
    psnrs, ssims, quality_true, quality_pred, grade_true, grade_pred = [], [], [], [], [], []
    for index in range(loader.batches):
        batch = loader.batch(index)
        outputs = model.forward_with_heads(batch["image"].to(config.device))
        if "enhanced" in outputs:
            for i in torch.nonzero(batch["has_clean"]).flatten().tolist():
                enhanced = outputs["enhanced"][i].float().permute(1, 2, 0).cpu().numpy()
                clean = batch["clean"][i].permute(1, 2, 0).numpy()
                mask = batch["mask"][i, 0].numpy() > 0.5
                psnrs.append(psnr(enhanced, clean, mask))
                ssims.append(ssim(enhanced, clean, mask))
        if "quality_logits" in outputs:
            keep = batch["quality"] != IGNORE
            quality_true += batch["quality"][keep].tolist()
            quality_pred += outputs["quality_logits"][keep.to(config.device)].argmax(1).cpu().tolist()
        if "dr_logits" in outputs:
            keep = batch["grade"] != IGNORE
            grade_true += batch["grade"][keep].tolist()
            grade_pred += outputs["dr_logits"][keep.to(config.device)].argmax(1).cpu().tolist()
    loader.close()
    result: dict[str, Any] = {"val_n": len(loader.records), "val_seconds": round(time.perf_counter() - started, 1)}
    if psnrs:
        result.update(val_psnr=float(np.mean(psnrs)), val_ssim=float(np.mean(ssims)))
    if quality_true:
        labels = [str(i) for i in range(len(CLASSES))]
        result.update(
            val_quality_accuracy=float(np.mean(np.array(quality_true) == np.array(quality_pred))),
            val_quality_kappa=quadratic_weighted_kappa([str(i) for i in quality_pred], [str(i) for i in quality_true], labels),
        )
    if grade_true:
        labels = [str(i) for i in range(len(grades))]
        result.update(
            val_dr_accuracy=float(np.mean(np.array(grade_true) == np.array(grade_pred))),
            val_dr_kappa=quadratic_weighted_kappa([str(i) for i in grade_pred], [str(i) for i in grade_true], labels),
        )
    key = {"iqe": "val_psnr", "iqa": "val_quality_kappa"}.get(task, "val_dr_kappa")
    score = result.get(key)
    result["score"] = None if score is None or math.isnan(score) else float(score)
    return result


# ---- data ---------------------------------------------------------------------------------


class _Batches:
    """Batches of step k depend only on (seed, k): a resumed run sees the same data. The next batch is read
    in a background thread while the current one trains. Validation batches are the records in order."""

    def __init__(self, records: list[CleaqRecord], config: CleaqTrainConfig, size: int, *, training: bool):
        self.records, self.config, self.size, self.training = records, config, size, training
        self.batches = math.ceil(len(records) / config.batch_size)
        self.wants_pairs = config.task == "iqe" or (config.task == "joint" and config.iqe)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyfundus-cleaq-batch")
        self.pending: dict[int, Any] = {}

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        future = self.pending.pop(step, None) or self.pool.submit(self._make, step)
        if self.training or step + 1 < self.batches:
            self.pending[step + 1] = self.pool.submit(self._make, step + 1)
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _indices(self, step: int) -> list[int]:
        n, size = len(self.records), self.config.batch_size
        if not self.training:
            return list(range(step * size, min(n, (step + 1) * size)))
        epoch, offset = divmod(step * size, n)
        indices = [int(i) for i in _epoch_order(self.config.seed, epoch, n)[offset : offset + size]]
        while len(indices) < size:  # wrap into the next epochs' order
            epoch += 1
            indices += [int(i) for i in _epoch_order(self.config.seed, epoch, n)[: size - len(indices)]]
        return indices

    def _make(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, step, 1 if self.training else 2])
        samples = [self._sample(self.records[i], rng) for i in self._indices(step)]
        return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}

    def _sample(self, record: CleaqRecord, rng: np.random.Generator) -> dict[str, Any]:
        image = _square(record.image, record.cropped)
        quality = CLASSES.index(record.quality) if record.quality else IGNORE
        clean = _square(record.clean, True) if record.clean and self.wants_pairs else None
        if clean is None and self.wants_pairs and self.config.pairs_on_the_fly and record.quality in ("Good", "Usable"):
            image, clean, quality = _degraded_pair(image, record.quality, rng)
        mask = field_mask(clean if clean is not None else image)
        vessels = _vessel_map(record.vessels) if record.vessels and clean is not None else None
        if vessels is None and clean is not None:
            from .data.vessels import vessel_mask_from_photo

            vessels = vessel_mask_from_photo(clean, mask)
        arrays = {"image": image, "clean": clean, "vessels": vessels, "mask": mask}
        arrays = {k: None if v is None else _resized(v, self.size) for k, v in arrays.items()}
        if self.training:
            arrays = _augmented(arrays, rng, self.config.crop if self.config.task == "iqe" else None)
        side = arrays["image"].shape[0]
        zeros = np.zeros((side, side), np.float32)
        return {
            "image": _chw(arrays["image"]),
            "clean": _chw(arrays["clean"]) if arrays["clean"] is not None else np.zeros((3, side, side), np.float32),
            "has_clean": clean is not None,
            "vessels": (arrays["vessels"] if arrays["vessels"] is not None else zeros)[None].astype(np.float32),
            "has_vessels": vessels is not None,
            "mask": arrays["mask"][None].astype(np.float32),
            "quality": quality,
            "grade": record.dr_grade if record.dr_grade is not None else IGNORE,
        }


def _square(path: Path, cropped: bool) -> np.ndarray:
    """The field-of-view square of a photo (pyfundus tables hold such squares already)."""
    if cropped:
        return np.asarray(Image.open(path).convert("RGB"))
    from .data.cleaq import SIZE

    rgb = read_image(path, min_side=SIZE).pixels  # large photos decode reduced: the networks see 512 px at most
    return crop_to_field_of_view(rgb, find_field_of_view(rgb))


def _degraded_pair(image: np.ndarray, quality: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """CLEAQ-DR's pair for a photo with no clean original: all three cofe-Net degradations of a Good photo,
    one or two of a Usable one, at the cofe-Net size; the pair's class is the worse of the photo's and the
    degradation's (FQS-proxy) class."""
    from .data.cleaq import SIZE
    from .data.degrade import cofe_all_three, cofe_one_or_two
    from .data.proxy import PROXY_THRESHOLDS, proxy_mos

    clean = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    degrade = cofe_all_three if quality == "Good" else cofe_one_or_two
    degraded, record = degrade(clean, rng, mask=field_mask(clean))
    level = PROXY_THRESHOLDS.classify(proxy_mos([s["severity"] for s in record.steps]))
    return degraded, clean, max(CLASSES.index(level), CLASSES.index(quality))


def _vessel_map(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[0] == size and array.shape[1] == size:
        return array
    if array.dtype == bool:
        return cv2.resize(array.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5
    return cv2.resize(array, (size, size), interpolation=cv2.INTER_AREA)


def _augmented(arrays: dict[str, np.ndarray | None], rng: np.random.Generator, crop: int | None) -> dict:
    """The same flips, quarter turns and crop for the image and its targets."""
    turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    side = next(a for a in arrays.values() if a is not None).shape[0]
    y = x = 0
    if crop is not None and crop < side:
        y, x = (int(v) for v in rng.integers(0, side - crop + 1, size=2))
    else:
        crop = side
    out = {}
    for key, array in arrays.items():
        if array is None:
            out[key] = None
            continue
        array = array[y : y + crop, x : x + crop]
        array = np.rot90(array, turns)
        out[key] = np.ascontiguousarray(array[:, ::-1] if flip else array)
    return out


def _chw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / 255.0


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


# ---- initialisation ---------------------------------------------------------------------


def _parts(model: torch.nn.Module, task: str) -> dict[str, torch.nn.Module]:
    if task in ("iqe", "iqa"):
        return {task: model, "model": model}
    parts = {"dr": model.dr, "model": model}
    if model.iqe is not None:
        parts["iqe"] = model.iqe
    if model.iqa is not None:
        parts["iqa"] = model.iqa
    return parts


def _init_part(model: torch.nn.Module, task: str, part: str, path: str) -> None:
    """Load ``path`` into ``part``: a pyfundus model of that part, or a plain ResNet state dict (a user's own
    ImageNet weights, say) into whichever of the part's ResNet backbones it fits."""
    from safetensors import safe_open

    from .models.resnet import ResNet

    parts = _parts(model, task)
    if part not in parts:
        raise ValueError(f"--init {part}=...: this {task} network has no {part} part (it has {', '.join(parts)})")
    module = parts[part]
    with safe_open(path, framework="pt") as handle:
        is_pyfundus = "pyfundus" in (handle.metadata() or {})
    if is_pyfundus:
        state, _ = load_weights(path)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: does not fit the {part} (missing {missing[:3]}, unexpected {unexpected[:3]})")
        log.info("initialised %s from %s", part, path)
        return
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(path).items() if not k.startswith("fc.")}
    loaded = []
    for name, backbone in module.named_modules():
        if not isinstance(backbone, ResNet):
            continue
        own = backbone.state_dict()
        if set(own) <= set(state) and all(own[k].shape == state[k].shape for k in own):
            backbone.load_state_dict({k: state[k] for k in own})
            loaded.append(name or part)
    if not loaded:
        raise ValueError(
            f"{path}: neither a pyfundus {part} model nor a ResNet state dict that fits one of its backbones "
            "(torchvision's key names and this width's shapes are expected)"
        )
    log.info("initialised backbone(s) %s of %s from %s", ", ".join(loaded), part, path)


# ---- saving and resuming -------------------------------------------------------------------


def _save(model, path: Path, config: CleaqTrainConfig, arch: str, kwargs: dict, dataset, history: list[dict]) -> Path:
    classes = list(CLASSES) if config.task == "iqa" else list(dataset.grades or ())
    what = {"iqe": "enhancer", "iqa": "quality classifier", "dr": "DR grader", "joint": "DR grader (joint)"}[config.task]
    return save_weights(
        model,
        path,
        ModelConfig(
            arch=arch, arch_kwargs=kwargs, input=model.input_spec, trained=True, classes=classes,
            description=f"CLEAQ-DR {what} ({config.setting} setting) trained by pyfundus on {dataset.name}",
            training={"config": asdict(config), "validation": history[-1] if history else {}},
        ),
    )  # fmt: skip


def _save_state(path: Path, model, optimizer, step: int, history: list[dict], initial: dict[str, float]) -> None:
    record = {"step": str(step), "history": json.dumps(history), "initial_losses": json.dumps(initial)}
    save_training_state(path, {"model": model}, optimizer, record)


def _load_state(path: Path, model, optimizer) -> tuple[int, list[dict], dict[str, float]]:
    record = load_training_state(path, {"model": model}, optimizer)
    return int(record["step"]), json.loads(record["history"]), json.loads(record["initial_losses"])


def _amp_dtype(config: CleaqTrainConfig) -> torch.dtype | None:
    if config.amp == "off":
        return None
    if config.amp == "bf16" or torch.device(config.device).type == "cuda":
        return torch.bfloat16
    from .export.runtimes import cpu_has_native_bf16

    return torch.bfloat16 if cpu_has_native_bf16() else None


def _plot_history(history: list[dict], path: Path, task: str) -> None:
    if not history:
        return
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib missing (pip install 'pyfundus[train]'): no training.png")
        return
    steps = [h["step"] for h in history]
    figure = Figure(figsize=(10, 3.5))
    left, right = figure.subplots(1, 2)
    for key in sorted({k for h in history for k in h if k.startswith("loss_")}):
        left.plot(steps, [h.get(key, np.nan) for h in history], label=key[5:])
    left.set(xlabel="step", ylabel="loss (at the validation steps)", yscale="log", title=f"{task}: task losses")
    left.legend()
    for key in sorted({k for h in history for k in h if k.startswith("val_") and k not in ("val_n", "val_seconds")}):
        right.plot(steps, [h.get(key, np.nan) for h in history], marker="o", label=key[4:])
    right.set(xlabel="step", title="validation")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
