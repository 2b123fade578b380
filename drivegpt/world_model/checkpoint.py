"""Saving and loading world models: ``world_model.pt`` exports and Lightning ``.ckpt`` files."""

from __future__ import annotations

from pathlib import Path

import torch

from drivegpt.runs import atomic_path
from drivegpt.world_model.model import WorldModel, WorldModelConfig

KIND = "drivegpt-world-model"


def save_world_model(model: WorldModel, path: str | Path, extra: dict | None = None) -> Path:
    """Atomically write {kind, config, tokenizer_path, state_dict} to ``path``."""
    blob = {
        "kind": KIND,
        "config": model.cfg.to_dict(),
        "tokenizer_path": model.tokenizer_path,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def load_world_model(path: str | Path, map_location="cpu") -> WorldModel:
    """Load a world model (eval mode) from a ``world_model.pt`` export or a training ``.ckpt``."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "world_model.pt", path / "checkpoints" / "last.ckpt"):
            if cand.exists():
                path = cand
                break
    if not path.exists():
        raise FileNotFoundError(f"{path}: no world-model checkpoint")
    blob = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: not a world-model checkpoint (got {type(blob).__name__})")
    if blob.get("kind") == KIND:
        cfg, tok, state = blob["config"], blob.get("tokenizer_path"), blob["state_dict"]
    elif "hyper_parameters" in blob and "model_config" in blob["hyper_parameters"]:
        hp = blob["hyper_parameters"]
        cfg, tok = hp["model_config"], hp.get("tokenizer_path")
        state = {k[len("model."):]: v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    else:
        raise ValueError(f"{path}: not a world-model checkpoint (no kind={KIND!r} or Lightning "
                         "hyper_parameters.model_config)")
    model = WorldModel(WorldModelConfig.from_dict(cfg), tokenizer_path=tok)
    state.setdefault("dis_prior", model.dis_prior)  # older exports: uncalibrated (balanced) head
    model.load_state_dict(state)
    return model.eval()
