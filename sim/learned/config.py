"""Settings of the learned simulator: the ``learned_sim`` config group.

The dataclass holds the defaults (``gym.make("drivegpt/WorldModel-v0", checkpoint=...)`` works
without hydra); ``configs/learned_sim/default.yaml`` only binds the hydra-side values (the data
rate and held-out split, ``device: auto``) and a test keeps its other values equal to these.
Hydra configs and keyword arguments override them by name, and an unknown name is an error
that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from drivegpt.settings import typed

TERMINATION_MODES = ("sample", "threshold", "never")
OBS_KINDS = ("frames", "tokens")
OUTPUT_KINDS = ("numpy", "torch")
AUTORESET_MODES = ("next_step", "same_step")


@dataclass
class LearnedSimConfig:
    # --- models and start states ---
    checkpoint: str | None = None          # world-model checkpoint (load_world_model)
    tokenizer: str | None = None           # override the tokenizer path recorded in the checkpoint
    ensemble: list[str] = field(default_factory=list)  # extra world-model checkpoints (disagreement)
    shards: str | None = None              # token shards to draw held-out start contexts from
    val_fraction: float = 0.1              # the held-out split (data.loaders.split_of)
    max_contexts: int = 256                # start contexts kept in memory
    handback_fraction: float = 0.0         # share of episodes that start at a handback (the first engaged
                                           # frame after a takeover; contexts.handback_starts), when the
                                           # pool has any; 0: engaged windows only
    handbacks_per_segment: int = 8         # handback windows kept per segment when handback_fraction > 0
    fps: float = 20.0                      # native log rate
    stride: int = 4                        # world-model step = stride / fps seconds
    device: str = "cpu"                    # "auto" = cuda when available
    # --- episode ---
    max_steps: int = 50                    # truncation horizon (world-model steps)
    observation: str = "frames"            # "frames": decoded uint8 HxWx3; "tokens": int64 h x w
    output: str = "numpy"                  # vector env returns numpy (gymnasium) or torch (on device)
    autoreset_mode: str = "next_step"      # vector env: gymnasium NEXT_STEP or SAME_STEP
    # --- world-model sampling ---
    temperature: float = 1.0               # 0 = greedy
    top_k: int | None = None
    cfg_scale: float = 1.0
    retokenize: bool = False               # the window keeps each new frame's tokenizer round trip (the
                                           # step still returns the generated tokens; README "World model",
                                           # *Retokenized rollouts*)
    # --- reward ---
    # reward = -sum_{h,c} horizon_weights[h] * cause_weights[c] * p[h, c]
    #          - comfort_weight * ((lat_accel/lat_scale)^2 + (jerk/jerk_scale)^2)
    #          - uncertainty_weight * entropy
    horizon_weights: list[float] | None = None   # None = uniform 1/n_horizons
    cause_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # STEER BRAKE GAS
    comfort_weight: float = 0.0
    lat_accel_scale: float = 3.0           # m/s^2
    jerk_scale: float = 5.0                # m/s^3
    uncertainty_weight: float = 0.0
    entropy: bool = True                   # token entropy per step (one extra teacher-forced pass
                                           # when sampling.step does not return it)
    # --- termination on the disengagement head ---
    termination: str = "sample"            # sample (IRIS-style Bernoulli) | threshold | never
    threshold: float = 0.5                 # per-step event probability for termination=threshold
    # --- vehicle model ---
    vehicle: dict[str, Any] = field(default_factory=dict)             # VehicleParams overrides
    domain_randomization: dict[str, float] = field(default_factory=dict)  # field -> +-relative range

    def __post_init__(self):
        if self.device == "auto":
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"

        def bad(key, msg):
            raise ValueError(f"learned_sim.{key}: {msg}")

        if self.termination not in TERMINATION_MODES:
            bad("termination", f"{self.termination!r} is not one of {TERMINATION_MODES}")
        if self.observation not in OBS_KINDS:
            bad("observation", f"{self.observation!r} is not one of {OBS_KINDS}")
        if self.output not in OUTPUT_KINDS:
            bad("output", f"{self.output!r} is not one of {OUTPUT_KINDS}")
        if self.autoreset_mode not in AUTORESET_MODES:
            bad("autoreset_mode", f"{self.autoreset_mode!r} is not one of {AUTORESET_MODES}")
        if self.max_steps < 1:
            bad("max_steps", f"must be >= 1, got {self.max_steps}")
        if self.stride < 1:
            bad("stride", f"must be >= 1, got {self.stride}")
        if len(self.cause_weights) != 3:
            bad("cause_weights", f"needs 3 weights (STEER, BRAKE, GAS), got {len(self.cause_weights)}")
        if self.temperature < 0:
            bad("temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 <= float(self.handback_fraction) <= 1.0:
            bad("handback_fraction", f"must be in [0, 1], got {self.handback_fraction}")
        if self.handbacks_per_segment < 0:
            bad("handbacks_per_segment", f"must be >= 0, got {self.handbacks_per_segment}")
        for k, r in self.domain_randomization.items():
            if not 0 <= float(r) < 1:
                bad(f"domain_randomization.{k}", f"relative range must be in [0, 1), got {r}")

    @property
    def pool_handbacks(self) -> int:
        """Handback windows per segment to collect for the start-context pool (0 when unused)."""
        return int(self.handbacks_per_segment) if self.handback_fraction > 0 else 0

    @property
    def dt(self) -> float:
        """Seconds per world-model step."""
        return self.stride / self.fps

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None = None, **overrides) -> "LearnedSimConfig":
        """Build from a (hydra) mapping plus keyword overrides; unknown keys raise."""
        return typed(cls, cfg, "learned_sim", **overrides)
