"""Saving and loading world models: ``world_model.pt`` exports and Lightning ``.ckpt`` files
(through ``drivegpt.checkpoints``: safe loading, the kind checked)."""

from __future__ import annotations

from pathlib import Path

from drivegpt.checkpoints import WORLD_MODEL, read_artifact, save_artifact
from drivegpt.world_model.model import WorldModel, WorldModelConfig

KIND = WORLD_MODEL


def save_world_model(model: WorldModel, path: str | Path, extra: dict | None = None) -> Path:
    """Atomically write {kind, config, tokenizer_path, state_dict} to ``path``."""
    return save_artifact(path, KIND, model.cfg.to_dict(), model.state_dict(),
                         tokenizer_path=model.tokenizer_path, **(extra or {}))


def load_world_model(path: str | Path, map_location="cpu") -> WorldModel:
    """Load a world model (eval mode) from a ``world_model.pt`` export, a training ``.ckpt`` or a
    run directory; another kind of checkpoint or a non-checkpoint raises naming the file."""
    art = read_artifact(path, KIND)
    hp = art.get("hyper_parameters")  # a Lightning checkpoint of WorldModelModule
    tok = hp.get("tokenizer_path") if hp is not None else art.get("tokenizer_path")
    model = WorldModel(WorldModelConfig.from_dict(art.config), tokenizer_path=tok)
    state = dict(art.state_dict)
    state.setdefault("dis_prior", model.dis_prior)  # older exports: uncalibrated (balanced) head
    model.load_state_dict(state)
    return model.to(map_location).eval()
