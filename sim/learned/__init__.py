"""DriveGPT as a learned simulator: the world model behind the gymnasium API.

- ``WorldModelEnv`` ("drivegpt/WorldModel-v0") and ``WorldModelVectorEnv`` (its vector env)
- ``LearnedSimConfig``: settings (``learned_sim:`` in configs/rollout.yaml)
- ``SimCore``: the batched torch state machine both envs and ``drivegpt rollout`` run on
- ``Models`` / ``load_models``, ``ContextPool`` / ``pool_from_shards``: what the core runs on
"""

from drivegpt.sim.learned.config import LearnedSimConfig
from drivegpt.sim.learned.contexts import ContextPool, pool_from_samples, pool_from_shards
from drivegpt.sim.learned.core import SimCore, StepResult
from drivegpt.sim.learned.env import WorldModelEnv, make_core
from drivegpt.sim.learned.models import Models, ModelMismatchError, VehicleModel, check_compatible, load_models
from drivegpt.sim.learned.vector_env import WorldModelVectorEnv

__all__ = [
    "ContextPool", "LearnedSimConfig", "ModelMismatchError", "Models", "SimCore", "StepResult",
    "VehicleModel", "WorldModelEnv", "WorldModelVectorEnv", "check_compatible", "load_models",
    "make_core", "pool_from_samples", "pool_from_shards",
]
