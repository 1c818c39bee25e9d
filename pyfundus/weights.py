"""Model files: safetensors tensors plus a JSON config in the file's metadata.

safetensors holds plain tensors only, so loading a file from anywhere can
never execute code (unlike pickled checkpoints).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .grading import Thresholds

METADATA_KEY = "pyfundus"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"  # the shipped models, one .safetensors file per architecture
DEFAULT_MODEL = "fthnet_s"
# A safetensors file starts with the header's length (8 bytes, little-endian) and the header, JSON.
_HEADER_LENGTH = struct.Struct("<Q")
_MAX_HEADER = 100 * 2**20  # safetensors' own limit

# ImageNet statistics: FTHNet normalises its input as its Swin backbone was pretrained (Gong et al.).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CROPS = ("field_of_view",)


@dataclass(frozen=True)
class InputSpec:
    """The model's input contract, stored with its weights (as timm's ``pretrained_cfg``).

    ``crop``: "field_of_view" finds the retina's circle, crops the square around it and
    blacks out the corners (pyfundus.preprocess). Then the square is resized to
    ``size`` x ``size``, scaled to [0, 1] and normalised per channel with ``mean``/``std``.
    """

    size: int = 384
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: str = "field_of_view"

    def __post_init__(self):
        if self.size < 16:
            raise ValueError(f"input size must be at least 16 px, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values each, std positive; got {self.mean}, {self.std}")
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; known: {', '.join(CROPS)}")

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "crop": self.crop}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(
            size=int(data["size"]),
            mean=tuple(float(x) for x in data.get("mean", IMAGENET_MEAN)),
            std=tuple(float(x) for x in data.get("std", IMAGENET_STD)),
            crop=data.get("crop", "field_of_view"),
        )


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and read its output."""

    arch: str
    arch_kwargs: dict = field(default_factory=dict)
    # None until the network is built: files written before the contract was stored get the
    # architecture's own (``network.input_spec``), which is what they were trained with.
    input: InputSpec | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    trained: bool = False
    causes: list[str] = field(default_factory=list)  # names of the cause head's outputs, in order
    classes: list[str] = field(default_factory=list)  # names of a classifier's outputs, in order (DR grades)
    description: str = ""
    training: dict = field(default_factory=dict)  # data, schedule and metrics, for the record

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "arch": self.arch,
                "arch_kwargs": self.arch_kwargs,
                "input": None if self.input is None else self.input.to_dict(),
                "thresholds": self.thresholds.to_dict(),
                "trained": self.trained,
                "causes": self.causes,
                "classes": self.classes,
                "description": self.description,
                "training": self.training,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported pyfundus weights format {data.get('format_version')!r}")
        return cls(
            arch=data["arch"],
            arch_kwargs=data.get("arch_kwargs", {}),
            input=InputSpec.from_dict(data["input"]) if data.get("input") else None,
            thresholds=Thresholds.from_dict(data.get("thresholds", {})),
            trained=bool(data.get("trained", False)),
            causes=list(data.get("causes", [])),
            classes=list(data.get("classes", [])),
            description=data.get("description", ""),
            training=data.get("training", {}),
        )


def save_weights(model, path: str | Path, config: ModelConfig) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: config.to_json()})
    return path


def shipped_weights(name: str = DEFAULT_MODEL) -> Path:
    """The file of a shipped model (it may not exist: not every architecture ships weights)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def read_config(path: str | Path) -> ModelConfig:
    """A model file's config from its header alone, without reading a tensor (instant, for --help).

    Raises ValueError naming the file when it is no safetensors file or holds no pyfundus config.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(_HEADER_LENGTH.size)
        (length,) = _HEADER_LENGTH.unpack(head) if len(head) == _HEADER_LENGTH.size else (None,)
        if length is None or length > _MAX_HEADER:
            raise ValueError(f"{path}: not a readable safetensors file (no header)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file (header: {exc})") from exc
    metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no pyfundus config in the file's metadata; was it saved with pyfundus.save_weights?")
    return ModelConfig.from_json(metadata[METADATA_KEY])


def load_weights(path: str | Path):
    """Returns (state_dict, ModelConfig). Raises ValueError naming the file on any problem."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors weights are loaded (pickled checkpoints can run code)")
    config = read_config(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    return state, config
