"""A training run's resumable state in one safetensors file: weights, optimizer, RNG, and the run's own record.

``pyfundus train`` (weights and their EMA) and the CLEAQ-DR stages (``pyfundus.collab``) both resume from it.
Tensors are ``<prefix>.<name>`` per module, ``optim.<index>.<name>`` per optimizer state, ``rng.torch``; the
optimizer's parameter groups and the caller's record (step, history, ...) are JSON strings in the metadata.
Written to a temporary file and renamed, so a crash mid-save keeps the previous state.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_training_state(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                        record: dict[str, str]) -> None:  # fmt: skip
    from safetensors.torch import save_file

    tensors = {f"{prefix}.{k}": v.detach().contiguous().cpu() for prefix, module in modules.items()
               for k, v in module.state_dict().items()}  # fmt: skip
    tensors["rng.torch"] = torch.get_rng_state()  # drop-path draws: a resumed run continues the same stream
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value.detach().reshape(-1).cpu() if value.ndim == 0 else value.detach().cpu()
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata={**record, "param_groups": json.dumps(state["param_groups"])})
    temporary.replace(path)


def load_training_state(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, str]:
    """Restore ``modules``, ``optimizer`` and the torch RNG from ``path``; returns the caller's record."""
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"{path}: nothing to resume from")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for prefix, module in modules.items():
        module.load_state_dict({k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
    torch.set_rng_state(tensors["rng.torch"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return metadata
