"""The procedural road world: DriveGPT's embedded data source and ground truth.

Public surface:
- ``RoadWorldEnv`` (gym id ``drivegpt/RoadWorld-v0``), ``RoadWorldConfig``
- ``drive_segment(seed, seconds, cfg_sim, height, width) -> data.schema.Segment``
- ``replay(meta, world_pose0, rel_poses, start_index, traffic=None) -> frames``
- controllers ``Autopilot``, ``HumanDriver`` (``act(env) -> normalized action``)
- ``Takeover``: the fleet's human-takeover protocol (fleet and closed-loop evaluation)
- ``ProceduralSource`` (``.source``): the road world as a fleet-log source
- ``fleet_stats(segments)``; ``python -m drivegpt.sim.roadworld.preview`` (contact sheet, WebM, GIF)
- building blocks: ``World`` (one drive), ``Camera``/``Renderer``, ``SafetyDriver``
"""

from .config import RoadWorldConfig
from .controllers import Autopilot, HumanDriver
from .env import RoadWorldEnv
from .fleet import TRAFFIC_COLUMNS, drive_segment, fleet_stats, make_config, segment_id
from .render import Camera, Renderer
from .replay import replay, world_from_meta
from .safety import SafetyDriver
from .takeover import Takeover, safe_to_engage
from .world import World

__all__ = ["RoadWorldEnv", "RoadWorldConfig", "drive_segment", "replay", "world_from_meta",
           "Autopilot", "HumanDriver", "World", "Camera", "Renderer", "SafetyDriver",
           "TRAFFIC_COLUMNS", "make_config", "segment_id", "fleet_stats", "Takeover", "safe_to_engage"]
