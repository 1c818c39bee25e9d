"""Model files: safetensors tensors plus a JSON config in the file's metadata.

safetensors holds plain tensors only, so loading a file from anywhere can
never execute code (unlike pickled checkpoints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .grading import Thresholds

METADATA_KEY = "pyfundus"
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and read its output."""

    arch: str
    arch_kwargs: dict = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    trained: bool = False
    causes: list[str] = field(default_factory=list)  # names of the cause head's outputs, in order
    description: str = ""
    training: dict = field(default_factory=dict)  # data, schedule and metrics, for the record

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "arch": self.arch,
                "arch_kwargs": self.arch_kwargs,
                "thresholds": self.thresholds.to_dict(),
                "trained": self.trained,
                "causes": self.causes,
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
            thresholds=Thresholds.from_dict(data.get("thresholds", {})),
            trained=bool(data.get("trained", False)),
            causes=list(data.get("causes", [])),
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


def load_weights(path: str | Path):
    """Returns (state_dict, ModelConfig). Raises ValueError naming the file on any problem."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors weights are loaded (pickled checkpoints can run code)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no pyfundus config in the file's metadata; was it saved with pyfundus.save_weights?")
    return state, ModelConfig.from_json(metadata[METADATA_KEY])
