"""DriveGPT world model: pose-conditioned next-frame tokens + disengagement probabilities.

Public surface: ``WorldModel``, ``WorldModelConfig``, ``load_world_model``, ``save_world_model``
and ``sampling.step`` (the learned simulator's call).
"""

from drivegpt.world_model.checkpoint import load_world_model, save_world_model
from drivegpt.world_model.model import WorldModel, WorldModelConfig

__all__ = ["WorldModel", "WorldModelConfig", "load_world_model", "save_world_model"]
