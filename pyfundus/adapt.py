"""Site adaptation: ``pyfundus adapt`` teaches the gate one site's camera from that site's own captures.

No dataset covers every clinic's camera, and a model that never saw a camera can grade its clean
captures Reject. So the site gives a few captures it judges good (one is enough to start, 10-30
is better) and, if it has them, some it judges Usable or Reject. From those, on the clinic PC and
with no labels from outside:

1. **Variants in the camera's own look.** Each good capture is degraded by the simulator
   (:func:`pyfundus.data.degrade.degrade`, labelled with the proxy MOS of
   :mod:`pyfundus.data.proxy`), with no random camera rendering: the data keeps this camera's
   colour, optics and framing, so the model learns what *this* camera's defects look like.
   The site's own Usable and Reject captures join with their class's mid score.
2. **Replay.** A share of every batch is synthetic fundi (and the licence-clear sample photos,
   when fetched) with random cameras and degradations, as in base training, so fine-tuning on
   one camera does not make the model forget what a defect is elsewhere.
3. **Fine-tuning** from the base model (the shipped one by default) for a planned number of
   steps that fits the time budget, resumable from its state file.
4. **Thresholds** refitted on held-back variants, as training fits them.
5. **Before and after** on captures held back from training (when there are four or more good
   ones; else on fresh variants of the training captures, an optimistic check that says so).
   A site model that grades the held-back data worse than the base model is not written
   (``force`` overrides).

The site model's metadata records where it came from (base model sha256, camera, how many
captures and their sha256, steps, metrics, thresholds, date) and nothing else about the
captures: no file names, no patient data.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.camera import Camera
from .data.degrade import degrade
from .data.proxy import PROXY_THRESHOLDS, WORKING_SIZE, proxy_mos
from .io import ImageReadError, read_image
from .metrics import calibrate_thresholds, quadratic_weighted_kappa, srcc
from .paths import sha256_file
from .preprocess import NoFundusError, crop_to_field_of_view, find_field_of_view, preprocess
from .progress import progress_bar
from .verdicts import CAUSES, CLASSES
from .version import __version__
from .weights import InputSpec, save_weights

log = logging.getLogger(__name__)

__all__ = ["AdaptConfig", "AdaptRefused", "Capture", "adapt", "read_captures"]

# A site's Usable and Reject captures train towards their class's middle on the proxy scale.
CLASS_TARGETS = {"Good": 95.0, "Usable": 55.0, "Reject": 20.0}
STATE_FILE = "adapt-state.safetensors"
TUNED = {
    "all": (),  # every parameter
    "late": ("stages.2.", "stages.3.", "distortion.", "hypernet.", "target.", "class_head.", "cause_head."),
    "head": ("distortion.", "hypernet.", "target.", "class_head.", "cause_head."),
}


class AdaptRefused(RuntimeError):
    """The adapted model grades the held-back data worse than the base model (written only when forced)."""


@dataclass(frozen=True)
class Capture:
    """One site capture, by content only: its pixels (the field of view, 512 px square), grade and camera."""

    sha256: str
    level: str  # Good, Usable or Reject: what the site says it is
    camera: str
    square: np.ndarray


@dataclass
class AdaptConfig:
    out: str  # the site model to write (.safetensors)
    base: str | None = None  # the model to adapt (default: the shipped one)
    minutes: float = 20.0  # time budget for the whole run
    steps: int = 300  # most optimiser steps; fewer when the budget cannot hold them
    batch_size: int = 8
    # All layers at 1e-4: the only setting that graded no clean capture Reject in any check. The head alone at
    # 3e-4 agreed better on DRIVE but rejected 3 of 8 clean captures of a very unfamiliar camera (MODEL_CARD.md).
    lr: float = 1e-4
    tune: str = "all"  # which parameters learn: all, late (the last two stages and the head) or head
    variants: int = 320  # site variants in all, shared among the good training captures
    clean_fraction: float = 0.2  # of the site variants left undegraded
    replay: float = 0.25  # share of each batch from the replay data (its pool is sized to match: r / (1 - r))
    holdout: float = 0.25  # share of the good captures held back, when there are at least MIN_HOLDOUT_SOURCES
    eval_variants: int = 24  # fresh variants per held-back capture
    cause_weight: float = 0.25
    seed: int = 0
    device: str = "cpu"
    work_dir: str | None = None  # state for --resume (default: next to ``out``)
    force: bool = False

    def __post_init__(self):
        if self.tune not in TUNED:
            raise ValueError(f"tune must be one of {', '.join(TUNED)}, not {self.tune!r}")
        if not 0 <= self.replay < 1:
            raise ValueError(f"replay must be in [0, 1), got {self.replay}")
        if self.minutes <= 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("minutes, steps and batch_size must be positive")


MIN_HOLDOUT_SOURCES = 4


def read_captures(graded: dict[str, Sequence[str | Path]], *, on_error: Callable[[str], None] = log.warning) -> list[Capture]:
    """The site's captures, graded by ``{"Good": paths, "Usable": ..., "Reject": ...}``: each read once,
    cropped to its field of view, identified by content (a capture given twice counts once)."""
    captures: dict[str, Capture] = {}
    for level in CLASSES:
        for path in graded.get(level, ()):
            try:
                image = read_image(path, min_side=WORKING_SIZE)
                square = crop_to_field_of_view(image.pixels, find_field_of_view(image.pixels))
            except (ImageReadError, NoFundusError) as exc:
                on_error(str(exc) if isinstance(exc, ImageReadError) else f"{path}: {exc}")
                continue
            square = _resize(square, WORKING_SIZE)
            digest = image.sha256 or sha256_file(path)
            captures.setdefault(digest, Capture(digest, level, image.camera, square))
    return list(captures.values())


def adapt(
    captures: Sequence[Capture],
    config: AdaptConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda message: log.info("%s", message),
) -> dict[str, Any]:
    """Adapt ``config.base`` to the captures' camera and write ``config.out``; returns the report.

    ``resume`` continues from the state an interrupted run saved (every 50 steps) in ``work_dir``;
    ``stop_at`` ends this session at that step with the state saved (then resume), returning
    ``{"stopped_at", "state"}``. Batches depend on (seed, step) alone, so a resumed run ends
    with the same weights as an uninterrupted one (when the time budget did not cut either short).

    Raises AdaptRefused (after saying why) when the result is worse than the base model on the
    held-back data and ``config.force`` is not set; ValueError when there is no good capture.
    """
    from .api import load_model

    started = time.monotonic()
    good = [c for c in captures if c.level == "Good"]
    if not good:
        raise ValueError("adapt needs at least one capture the site judges good (--good)")
    torch.manual_seed(config.seed)
    base = load_model(config.base, device=config.device)
    if base.network is None:
        raise ValueError(f"{config.base}: adapt needs weights (.safetensors or a registered model), not an export")
    spec = base.input
    camera = _main_camera(captures)
    rng = np.random.default_rng([config.seed, 1])
    order = rng.permutation(len(good))
    n_held = max(1, round(config.holdout * len(good))) if len(good) >= MIN_HOLDOUT_SOURCES else 0
    held, trained_on = [good[i] for i in order[:n_held]], [good[i] for i in order[n_held:]]
    others = [c for c in captures if c.level != "Good"]
    say(
        f"{len(good)} good capture(s) from {camera}"
        + (f" ({n_held} held back to check the result)" if n_held else " (too few to hold any back: the check "
           "is on fresh variants of the same captures, an optimistic bound)")  # fmt: skip
        + (f", {len(others)} Usable/Reject" if others else "")
    )
    with progress_bar(0, desc="building variants", unit="img", enabled=progress) as bar:
        site = _site_pool(trained_on, others, config, spec, bar)
        replay = _replay_pool(config, spec, bar, images=math.ceil(len(site) * config.replay / (1 - config.replay)))
        check = _check_pool(held or trained_on, config, spec, seed=config.seed + 1000, bar=bar)
        # Thresholds are fitted on other variants than those the result is checked on, or the check flatters.
        calibration = _check_pool(trained_on, config, spec, seed=config.seed + 2000, bar=bar)
        calibration += [item for item in site if item.group in {c.sha256 for c in others}]
    say(f"{len(site)} site variants, {len(replay)} replay images, {len(check)} images to check the result on")

    network = copy.deepcopy(base.network).to(config.device).train()
    params = _tuned_parameters(network, config.tune)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    work = Path(config.work_dir) if config.work_dir else Path(config.out).with_suffix(".adapt")
    identity = _identity(captures, config, base.sha256)
    step, planned = 0, None
    if resume:
        step, planned = _load_state(work / STATE_FILE, network, optimizer, identity)
        say(f"resuming at step {step}" + (f" of {planned}" if planned else ""))
    amp = _amp_dtype(config.device)
    causes = list(base.config.causes)
    n_check = len(check) + len(calibration)
    with progress_bar(planned or config.steps, initial=step, desc="adapting", unit="step", enabled=progress) as bar:
        while step < (planned or config.steps):
            if stop_at is not None and step >= stop_at:
                _save_state(work / STATE_FILE, network, optimizer, step, planned, identity)
                say(f"stopped at step {step}; continue with resume")
                return {"stopped_at": step, "state": str(work / STATE_FILE)}
            t0 = time.perf_counter()
            torch.manual_seed(config.seed * 1_000_003 + step)  # drop-path draws depend on the step alone, as batches do
            images, targets, cause_targets = _batch(site, replay, config, step)
            with torch.autocast(torch.device(config.device).type, dtype=amp, enabled=amp is not None):
                outputs = network.forward_with_heads(images.to(config.device))
            loss = _loss(outputs, targets, cause_targets, causes, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.param_groups[0]["lr"] = config.lr * _lr_factor(step, planned or config.steps)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            step_seconds = time.perf_counter() - t0
            if planned is None and step == min(2, config.steps):  # the first steps time the rest
                planned = _plan(config, started, step_seconds, n_check, say)
                bar.total = planned
                bar.refresh()
            if step % 50 == 0 or step == planned:
                _save_state(work / STATE_FILE, network, optimizer, step, planned, identity)
            if step < (planned or config.steps) and _time_left(config, started, step_seconds, n_check) < step_seconds:
                # The plan assumed the first steps' pace; a machine that slowed down must not overrun the budget.
                _save_state(work / STATE_FILE, network, optimizer, step, planned, identity)
                say(f"the {config.minutes:g}-minute budget ran out at step {step} of {planned or config.steps} "
                    f"(steps slowed to {step_seconds:.2f} s: other work on this machine?)")  # fmt: skip
                break
    network.eval()

    before = _evaluate(base.network, base.thresholds, check, spec, config.device)
    thresholds = calibrate_thresholds(*_scores_and_levels(network, calibration, spec, config.device))
    thresholds = type(thresholds)(thresholds.reject_below, thresholds.good_from, base.thresholds.temperature, True)
    after = _evaluate(network, thresholds, check, spec, config.device)
    report = {
        "camera": camera,
        "base": {"name": base.name, "sha256": base.sha256},
        "captures": {"good": len(good), "held_back": n_held, "usable": sum(c.level == "Usable" for c in captures),
                     "reject": sum(c.level == "Reject" for c in captures)},  # fmt: skip
        "checked_on": "held-back captures" if held else "fresh variants of the training captures (optimistic)",
        "steps": step,
        "tune": config.tune,
        "thresholds": {"reject_below": thresholds.reject_below, "good_from": thresholds.good_from},
        "before": before,
        "after": after,
        "seconds": round(time.monotonic() - started, 1),
    }
    worse = after["qwk"] < before["qwk"] or (after["qwk"] == before["qwk"] and after["srcc"] < before["srcc"])
    report["worse_than_base"] = bool(worse)
    if worse and not config.force:
        say("the adapted model grades the held-back data worse than the base model: not written (--force writes it)")
        raise AdaptRefused(json.dumps(report))
    config_out = copy.deepcopy(base.config)
    config_out.thresholds = thresholds
    config_out.description = f"{base.config.arch} adapted by pyfundus adapt to the camera {camera}"
    config_out.training = {"adapt": _provenance(report, captures, config)}
    save_weights(network, config.out, config_out)
    report["out"] = str(config.out)
    return report


# ---- data -------------------------------------------------------------------------


@dataclass
class _Item:
    input: torch.Tensor  # (3, S, S) float16, the model's input
    mos: float
    level: str
    causes: dict[str, float] = field(default_factory=dict)  # empty: not known (a site's own grade)
    group: str = ""  # which capture it came from (within-photo ranking)
    clean: bool = False


def _site_pool(good: Sequence[Capture], others: Sequence[Capture], config: AdaptConfig, spec: InputSpec, bar) -> list[_Item]:
    pool = []
    per_capture = max(1, math.ceil(config.variants / max(1, len(good))))
    for index, capture in enumerate(good):
        pool += _variants(capture.square, per_capture, [config.seed, 2, index], config.clean_fraction, spec, bar,
                          group=capture.sha256)  # fmt: skip
    for capture in others:
        item = _item(capture.square, CLASS_TARGETS[capture.level], capture.level, {}, spec, group=capture.sha256)
        if item is not None:
            pool.append(item)
            bar.update(1)
    return pool


def _check_pool(captures: Sequence[Capture], config: AdaptConfig, spec: InputSpec, *, seed: int, bar) -> list[_Item]:
    pool = []
    for index, capture in enumerate(captures):
        clean = _item(capture.square, proxy_mos([]), "Good", {}, spec, group=capture.sha256, clean=True)
        pool += [clean] if clean is not None else []
        pool += _variants(capture.square, config.eval_variants, [seed, 3, index], 0.0, spec, bar, group=capture.sha256)
    return pool


def _replay_pool(config: AdaptConfig, spec: InputSpec, bar, *, images: int) -> list[_Item]:
    """Synthetic fundi with random cameras and degradations (and the licence-clear samples when fetched),
    as many as ``images``: each drawn as often as a site variant is."""
    from .data.synth import generate_fundus

    if images == 0:
        return []
    sources = [_resize(crop_to_field_of_view(rgb, find_field_of_view(rgb)), WORKING_SIZE)
               for rgb in _licence_clear_samples()]  # fmt: skip
    n_synth = max(1, images // 4)
    for i in range(n_synth):
        rgb, _ = generate_fundus(config.seed * 7919 + i, size=WORKING_SIZE)
        sources.append(_resize(crop_to_field_of_view(rgb, find_field_of_view(rgb)), WORKING_SIZE))
    per_source = max(1, math.ceil(images / len(sources)))
    pool = []
    for index, square in enumerate(sources):
        pool += _variants(square, per_source, [config.seed, 4, index], 0.15, spec, bar, cameras=True, group=f"replay{index}")
    return pool[:images]


def _licence_clear_samples() -> list[np.ndarray]:
    """The CC0/CC-BY sample photos base training used, when `pyfundus data fetch-samples` has fetched them."""
    from .data.samples import licence_clear_paths

    photos = []
    for path in licence_clear_paths():
        try:
            photos.append(read_image(path, min_side=WORKING_SIZE).pixels)
        except ImageReadError:
            continue
    return photos


def _variants(square, n, seed, clean_fraction, spec, bar, *, cameras: bool = False, group: str = "") -> list[_Item]:
    items = []
    for k in range(n):
        rng = np.random.default_rng([*seed, k])
        keep_clean = rng.random() < clean_fraction
        source = Camera.draw(rng).render(square) if cameras else square
        image, record = degrade(source, rng, types=[] if keep_clean else None)
        mos = proxy_mos([step["severity"] for step in record.steps])
        item = _item(image, mos, PROXY_THRESHOLDS.classify(mos), record.causes, spec, group=group, clean=keep_clean)
        if item is not None:
            items.append(item)
        bar.update(1)
    return items


def _item(square, mos, level, causes, spec, *, group: str, clean: bool = False) -> _Item | None:
    try:
        tensor, _ = preprocess(square, spec)
    except NoFundusError:  # a variant framed so far off that no retina is found: as inference would fail it
        return None
    return _Item(torch.from_numpy(tensor).to(torch.float16), float(mos), level, dict(causes), group, clean)


def _resize(square: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)


def _main_camera(captures: Sequence[Capture]) -> str:
    counts: dict[str, int] = {}
    for capture in captures:
        counts[capture.camera] = counts.get(capture.camera, 0) + 1
    return max(counts, key=lambda key: (counts[key], key))


# ---- training ---------------------------------------------------------------------


def _batch(site: list[_Item], replay: list[_Item], config: AdaptConfig, step: int):
    """The batch of ``step``: drawn from (seed, step) alone, so a resumed run sees the same batches."""
    rng = np.random.default_rng([config.seed, 5, step])
    n_replay = round(config.batch_size * config.replay) if replay else 0
    items = [site[i] for i in rng.integers(0, len(site), config.batch_size - n_replay)]
    items += [replay[i] for i in rng.integers(0, len(replay), n_replay)] if n_replay else []
    images = []
    for item in items:
        x = item.input.float()
        if rng.random() < 0.5:
            x = x.flip(-1)
        if rng.random() < 0.5:
            x = x.flip(-2)
        images.append(x)
    targets = torch.tensor([item.mos / 100.0 for item in items], dtype=torch.float32)
    causes = torch.tensor([[item.causes.get(c, math.nan) for c in CAUSES] if item.causes else [math.nan] * len(CAUSES)
                           for item in items], dtype=torch.float32)  # fmt: skip
    return torch.stack(images), targets, causes


def _loss(outputs, targets, cause_targets, causes: list[str], config: AdaptConfig) -> torch.Tensor:
    loss = F.smooth_l1_loss(outputs["quality"].float(), targets.to(outputs["quality"].device), beta=0.1)
    if "cause_logits" in outputs and config.cause_weight > 0 and causes == list(CAUSES):
        known = ~torch.isnan(cause_targets).any(dim=1)
        if known.any():
            logits = outputs["cause_logits"].float()[known.to(outputs["cause_logits"].device)]
            loss = loss + config.cause_weight * F.binary_cross_entropy_with_logits(logits, cause_targets[known].to(logits.device))
    return loss


def _tuned_parameters(network: torch.nn.Module, tune: str) -> list[torch.nn.Parameter]:
    prefixes = TUNED[tune]
    tuned = []
    for name, parameter in network.named_parameters():
        learn = not prefixes or name.startswith(prefixes)
        parameter.requires_grad_(learn)
        if learn:
            tuned.append(parameter)
    return tuned


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _amp_dtype(device: str):
    from .export.runtimes import cpu_has_native_bf16

    if str(device).startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def _time_left(config: AdaptConfig, started: float, step_seconds: float, n_check: int) -> float:
    """Seconds of the budget left for training, keeping time for the final checks at the current pace."""
    checking = 2.5 * n_check * step_seconds / config.batch_size + 5.0  # two models score the check pool
    return config.minutes * 60.0 - (time.monotonic() - started) - checking


def _plan(config: AdaptConfig, started: float, step_seconds: float, n_check: int, say) -> int:
    """Steps that fit the time budget after what has been spent, leaving time for the final checks."""
    left = _time_left(config, started, step_seconds, n_check)
    steps = int(min(config.steps, max(3, left // step_seconds)))  # at least 3 when asked for, never more
    say(f"{step_seconds:.2f} s a step: {steps} steps fit the {config.minutes:g}-minute budget"
        + ("" if steps == config.steps else f" (of {config.steps} asked for)"))  # fmt: skip
    return steps


def _identity(captures: Sequence[Capture], config: AdaptConfig, base_sha256: str | None) -> str:
    """What a resumed run must share with the one that saved the state."""
    keys = {k: v for k, v in asdict(config).items() if k not in ("out", "minutes", "work_dir", "force", "device")}
    text = json.dumps({"captures": sorted((c.sha256, c.level) for c in captures), "config": keys, "base": base_sha256},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def _save_state(path: Path, network, optimizer, step: int, planned: int | None, identity: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in network.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{i}.{key}"] = value.detach().reshape(-1) if value.dim() == 0 else value.detach().contiguous()
    meta = {"step": str(step), "planned": str(planned or -1), "identity": identity}
    temporary = path.with_suffix(".part")
    save_file(tensors, str(temporary), metadata=meta)
    temporary.replace(path)  # a kill mid-write leaves the previous state, never half of one


def _load_state(path: Path, network, optimizer, identity: str) -> tuple[int, int | None]:
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"{path}: no adapt state to resume from")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if meta.get("identity") != identity:
        raise ValueError(f"{path}: saved by a run with other captures, base model or settings; start afresh")
    network.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict(state)
    planned = int(meta["planned"])
    return int(meta["step"]), planned if planned > 0 else None


# ---- checking -----------------------------------------------------------------------


@torch.no_grad()
def _scores_and_levels(network, pool: list[_Item], spec: InputSpec, device: str) -> tuple[np.ndarray, list[str]]:
    scores = []
    for start in range(0, len(pool), 16):
        batch = torch.stack([item.input.float() for item in pool[start : start + 16]]).to(device)
        scores.append((network(batch).float().cpu() * 100.0).clamp(0, 100).numpy())
    return np.concatenate(scores), [item.level for item in pool]


def _evaluate(network, thresholds, pool: list[_Item], spec: InputSpec, device: str) -> dict[str, float]:
    """How a model grades the check pool: the clean captures, the severe variants, the ranking, the classes."""
    network.eval()
    scores, levels = _scores_and_levels(network, pool, spec, device)
    predicted = [thresholds.classify(float(s)) for s in scores]
    clean = [i for i, item in enumerate(pool) if item.clean]
    severe = [i for i, item in enumerate(pool) if not item.clean and item.level == "Reject"]
    within = []
    for group in sorted({item.group for item in pool}):
        members = [i for i, item in enumerate(pool) if item.group == group]
        if len(members) > 2:
            rho = srcc(scores[members], [pool[i].mos for i in members])
            if not math.isnan(rho):
                within.append(rho)
    return {
        "n": len(pool),
        "clean_good_or_usable": _share(predicted, clean, ("Good", "Usable")),
        "clean_good": _share(predicted, clean, ("Good",)),
        "clean_score": round(float(np.mean(scores[clean])), 2) if clean else math.nan,
        "severe_reject": _share(predicted, severe, ("Reject",)),
        "within_photo_srcc": round(float(np.median(within)), 4) if within else math.nan,
        "srcc": round(float(srcc(scores, [item.mos for item in pool])), 4),
        "qwk": round(float(quadratic_weighted_kappa(predicted, levels)), 4),
        "accuracy": round(float(np.mean([p == t for p, t in zip(predicted, levels)])), 4),
    }


def _share(predicted: list[str], indices: list[int], wanted: tuple[str, ...]) -> float:
    if not indices:
        return math.nan
    return round(sum(predicted[i] in wanted for i in indices) / len(indices), 4)


def _provenance(report: dict, captures: Sequence[Capture], config: AdaptConfig) -> dict:
    """The record a site model carries: where it came from and how it did. Content hashes, never file names."""
    return {
        "base_sha256": report["base"]["sha256"],
        "base": report["base"]["name"],
        "camera": report["camera"],
        "cameras": sorted({c.camera for c in captures}),
        "captures": report["captures"],
        "capture_sha256": sorted(c.sha256 for c in captures),
        "steps": report["steps"],
        "tune": config.tune,
        "lr": config.lr,
        "seed": config.seed,
        "checked_on": report["checked_on"],
        "before": report["before"],
        "after": report["after"],
        "thresholds": report["thresholds"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pyfundus": __version__,
    }
