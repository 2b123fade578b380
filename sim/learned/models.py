"""Loading the pieces the learned simulator runs on, and checking they fit together.

- world model: ``drivegpt.world_model.load_world_model`` + ``sampling.step`` (worldmodel)
- tokenizer: ``drivegpt.tokenizer.load_tokenizer`` (tokenizer)
- vehicle model: ``sim.vehicle`` (roadworld), wrapped by ``VehicleModel`` so the core sees
  one batched torch interface.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.tokenizer import load_tokenizer
from drivegpt.world_model import load_world_model
from drivegpt.world_model.sampling import step as step_fn
import drivegpt.sim.vehicle as vehicle_module


class ModelMismatchError(ValueError):
    """Tokenizer, world model(s) or start contexts disagree (vocabulary, token grid, ...)."""


@dataclass
class Models:
    world_model: Any
    tokenizer: Any
    step_fn: Callable
    ensemble: list[Any] = field(default_factory=list)
    source: str = "<objects>"  # where they came from, for messages

    def _attr(self, name: str, model=None):
        m = self.world_model if model is None else model
        return getattr(m, name) if hasattr(m, name) else getattr(m.cfg, name)

    @property
    def vocab_size(self) -> int:
        return int(self._attr("vocab_size"))

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self._attr("grid"))

    @property
    def context_frames(self) -> int:
        return int(self._attr("context_frames"))

    @property
    def horizons(self) -> list[float]:
        return [float(h) for h in self._attr("horizons")]

    @property
    def fps(self) -> float | None:
        """Frame rate the world model reads (None if it does not say)."""
        try:
            return float(self._attr("fps"))
        except AttributeError:
            return None

    @property
    def can_teacher_force(self) -> bool:
        return isinstance(self.world_model, torch.nn.Module) and hasattr(self.world_model, "embed_sequence")

    @torch.no_grad()
    def entropy(self, tokens, rel_pose, speed, new) -> torch.Tensor:
        """Mean per-token entropy (nats) of the model's distributions over the new frame's tokens,
        teacher-forced on the tokens it produced: tokens [b,K,h,w], rel_pose [b,K,6] (last = the
        commanded move), speed [b,K], new [b,h,w] -> [b]. One parallel forward of K+1 frames."""
        toks = torch.cat([tokens, new[:, None]], 1)
        rel = torch.cat([rel_pose, torch.zeros_like(rel_pose[:, :1])], 1)
        spd = torch.cat([speed, speed[:, -1:]], 1)
        logits = self.world_model(toks, rel, spd)["logits"][:, -1].float()  # [b, n, V]
        logp = logits.log_softmax(-1)
        return -(logp.exp() * logp).sum(-1).mean(-1)

    def step_supports(self, name: str) -> bool:
        try:
            return name in inspect.signature(self.step_fn).parameters
        except (TypeError, ValueError):
            return False


def _existing(path: str | None, key: str) -> Path:
    if path is None or str(path) in ("", "???", "None"):
        raise ValueError(f"learned_sim.{key}: no world-model checkpoint given (pass {key}=PATH)")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"learned_sim.{key}: checkpoint {str(p)!r} does not exist")
    return p


def check_compatible(models: Models) -> Models:
    """Raise ``ModelMismatchError`` naming both sides if the tokenizer and world model(s) disagree."""
    wm, tok, src = models.world_model, models.tokenizer, models.source
    tok_grid = tuple(int(g) for g in tok.grid)
    if int(tok.vocab_size) != models.vocab_size:
        raise ModelMismatchError(
            f"{src}: tokenizer codebook size {int(tok.vocab_size)} != world-model vocab_size "
            f"{models.vocab_size}; the world model was trained on a different tokenizer")
    if tok_grid != models.grid:
        raise ModelMismatchError(
            f"{src}: tokenizer token grid {tok_grid} != world-model grid {models.grid}")
    for i, m in enumerate(models.ensemble):
        for attr in ("vocab_size", "grid", "context_frames", "horizons"):
            a, b = models._attr(attr, m), models._attr(attr)
            if (tuple(a) if isinstance(a, (list, tuple)) else a) != (tuple(b) if isinstance(b, (list, tuple)) else b):
                raise ModelMismatchError(f"{src}: ensemble member {i} has {attr}={a!r}, the main "
                                         f"world model {attr}={b!r}")
    return models


def load_models(cfg: LearnedSimConfig) -> Models:
    """Load world model (+ ensemble) and its tokenizer from ``cfg`` and check they fit."""
    ckpt = _existing(cfg.checkpoint, "checkpoint")

    device = torch.device(cfg.device)
    wm = load_world_model(str(ckpt)).to(device).eval()
    tok_path = cfg.tokenizer or getattr(wm, "tokenizer_path", None)
    if tok_path is None:
        raise ValueError(f"{ckpt}: the checkpoint records no tokenizer path; set learned_sim.tokenizer")
    tp = Path(str(tok_path)).expanduser()
    if not tp.exists() and not tp.is_absolute() and (ckpt.parent / tp).exists():
        tp = ckpt.parent / tp  # recorded relative to the run; try beside the checkpoint
    if not tp.exists():
        raise FileNotFoundError(f"{ckpt}: tokenizer {str(tok_path)!r} (recorded in the checkpoint or "
                                f"learned_sim.tokenizer) does not exist")

    tok = load_tokenizer(str(tp), map_location=device)
    ensemble = [load_world_model(str(_existing(p, f"ensemble[{i}]"))).to(device).eval()
                for i, p in enumerate(cfg.ensemble)]
    return check_compatible(Models(wm, tok, step_fn, ensemble, source=str(ckpt)))


GAIN_KEYS = ("gain_curvature", "gain_accel")


class VehicleModel:
    """Batched torch view of ``sim.vehicle``: state [b, 3] = (speed, curvature, accel).

    Domain randomization (``learned_sim.domain_randomization``: field -> relative range r, each
    env draws a factor 1 + r * U(-1, 1) at reset):
    - ``gain_curvature`` / ``gain_accel``: actuator gain mismatch, applied here to the
      normalized action before the vehicle model (works with any vehicle model);
    - any ``VehicleParams`` field, passed as a per-env [b] tensor, where ``sim.vehicle.step``
      accepts tensors for it (checked when the env is built; the current sim.vehicle uses
      float-only ops for its limits and time constants, so this errors clearly).
    """

    def __init__(self, module=None, overrides: dict | None = None):
        if module is None:
            module = vehicle_module  # roadworld's kinematic bicycle model
        # keep functions, not the module: gym.make deep-copies its kwargs
        self._step, self._normalize = module.step, module.normalize_action
        self.base = module.VehicleParams(**(overrides or {}))

    def params(self, u: torch.Tensor | None, ranges: dict[str, float]):
        """-> (params, gain [b, 2] or None). u: [b, len(ranges)] uniforms in sorted key order."""
        if not ranges or u is None:
            return self.base, None
        names = {f.name for f in fields(self.base)} if is_dataclass(self.base) else set()
        changes, gain = {}, torch.ones(u.shape[0], 2, device=u.device)
        for j, (k, r) in enumerate(sorted(ranges.items())):
            factor = 1.0 + float(r) * (2.0 * u[:, j] - 1.0)
            if k in GAIN_KEYS:
                gain[:, GAIN_KEYS.index(k)] = factor
            elif k in names:
                changes[k] = float(getattr(self.base, k)) * factor
            else:
                raise ValueError(f"learned_sim.domain_randomization.{k}: not a VehicleParams field "
                                 f"nor one of {GAIN_KEYS} (fields: {sorted(names)})")
        return (replace(self.base, **changes) if changes else self.base), gain

    def step(self, state: torch.Tensor, action: torch.Tensor, dt: float, params, gain=None):
        """state [b,3], normalized action [b,2] -> (state [b,3], rel_pose [b,6])."""
        if gain is not None:
            action = action * gain
        return self._step(state, action, dt, params)

    def normalize(self, u: torch.Tensor) -> torch.Tensor:
        """(curvature 1/m, accel m/s^2) [b,2] -> normalized action [b,2]."""
        return self._normalize(u)
