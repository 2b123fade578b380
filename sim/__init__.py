"""Simulators: the procedural road world (ground truth) and the learned world-model env.

Importing ``sim`` registers the gymnasium environments:
- ``drivegpt/RoadWorld-v0``: the procedural road world (``sim.roadworld``).
- ``drivegpt/WorldModel-v0``: DriveGPT as a learned simulator (``sim.learned``).
"""

import gymnasium as gym

_ENVS = {
    "drivegpt/RoadWorld-v0": dict(entry_point="drivegpt.sim.roadworld.env:RoadWorldEnv"),
    "drivegpt/WorldModel-v0": dict(
        entry_point="drivegpt.sim.learned.env:WorldModelEnv",
        vector_entry_point="drivegpt.sim.learned.vector_env:WorldModelVectorEnv",
    ),
}
for _id, _kw in _ENVS.items():
    if _id not in gym.registry:
        gym.register(id=_id, **_kw)
