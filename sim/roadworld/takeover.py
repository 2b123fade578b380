"""The fleet's human-takeover protocol, one home for the fleet and the closed-loop evaluation.

While a controller is engaged, the ground-truth safety driver checks every frame; on a
disengagement the competent human drives for ``autopilot.takeover_seconds`` and the
controller re-engages once the car is centered, aligned and the lead is at a safe distance
(``safe_to_engage``). ``drive_segment`` (the synthetic fleet) and
``drivegpt.rl.evaluate`` (policies in the ground truth) both run this protocol.

Per frame, in order::

    m = world.metrics()
    cause = takeover.turn(m, controller, world)   # hand back if due (controller.reset()), then the check
                                           # (a takeover ends a lane change the controller began):
                                           # None while the human drives, else the cause (logged here)
    action = controller.act(world) if takeover.engaged else takeover.human_act(world)
"""

from __future__ import annotations

import numpy as np

from drivegpt.data.schema import Cause

from .config import RoadWorldConfig
from .controllers import HumanDriver
from .safety import SafetyDriver


def safe_to_engage(m: dict) -> bool:
    """The re-engagement rule: centered, aligned, no closing lead within 4 s, a safe gap."""
    closing = m["speed"] - m["lead_speed"]
    ttc_ok = closing <= 0 or m["lead_gap"] / closing > 4.0
    return (abs(m["lane_offset"]) < 0.35 and abs(m["heading_error"]) < 0.04 and ttc_ok
            and m["lead_gap"] > max(8.0, 1.0 * m["speed"]))


class Takeover:
    """State of the protocol for one drive: who drives, and how long the human still must."""

    def __init__(self, cfg: RoadWorldConfig, safety: SafetyDriver | None = None):
        self.safety = safety if safety is not None else SafetyDriver(cfg.safety, cfg.dt)
        self.human = HumanDriver()
        self.takeover_steps = int(round(cfg.autopilot.takeover_seconds * cfg.fps))
        self.engaged, self.left = True, 0

    def reengage(self, m: dict) -> bool:
        """Hand back to the controller if the takeover is over and it is safe; True if it did."""
        if not self.engaged and self.left <= 0 and safe_to_engage(m):
            self.engaged = True
            self.safety.reset()
            return True
        return False

    def turn(self, m: dict, controller=None, world=None) -> Cause | None:
        """The protocol's turn at a frame, before its action: hand back if due (resetting
        ``controller``), then the safety driver's check. None while the human drives, else the
        check's cause (Cause.NONE: the controller drives on). Given the ``world``, a takeover
        also ends a lane change the controller had begun: the human finishes (or undoes) it
        (``controller.behaviours.takeover_lane``)."""
        if self.reengage(m) and controller is not None:
            controller.reset()
        if not self.engaged:
            return None
        cause = self.check(m)
        behaviours = getattr(controller, "behaviours", None)
        if cause != Cause.NONE and world is not None and behaviours is not None:
            world.lane = behaviours.takeover_lane(world)
        return cause

    def check(self, m: dict) -> Cause:
        """The safety driver's check of an engaged frame; a cause starts the human's takeover."""
        cause = self.safety.check(m)
        if cause != Cause.NONE:
            self.engaged, self.left = False, self.takeover_steps
            self.human.reset()
        return cause

    @property
    def reason(self) -> str:
        return self.safety.reason

    def human_act(self, world) -> np.ndarray:
        """The human's action during a takeover (counts one step of it)."""
        action = self.human.act(world)
        self.left -= 1
        return action
