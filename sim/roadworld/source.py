"""The road world as a fleet-log source: ``ProceduralSource`` (``drivegpt fleet generate``,
``drivegpt data ingest source=procedural``).

It lives with the road world, not in ``drivegpt.data.sources``: it drives
``drive_segment``, and the data layer sits below the simulator (the road world imports
``drivegpt.data.schema``, never the reverse).
"""

from __future__ import annotations

from drivegpt.data.schema import Segment

from .fleet import drive_segment


class ProceduralSource:
    """Indexed source over road-world segments; picklable (plain-dict sim config)."""

    def __init__(self, segments: int, seconds: float, sim: dict | None = None, first_seed: int = 0,
                 height: int = 128, width: int = 256):
        self.n_items = int(segments)
        self.seconds = float(seconds)
        self.sim = dict(sim or {})
        self.first_seed = int(first_seed)
        self.height, self.width = int(height), int(width)

    def settings(self) -> dict:
        return dict(seconds=self.seconds, first_seed=self.first_seed, height=self.height,
                    width=self.width, sim=self.sim)

    def make_item(self, i: int) -> Segment:
        return drive_segment(seed=self.first_seed + i, seconds=self.seconds, cfg_sim=self.sim,
                             height=self.height, width=self.width)
