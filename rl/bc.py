"""Behaviour cloning from fleet windows: targets from the inverse vehicle model.

A window (``data.loaders.window_dataset``, ``key="frames"``) holds ``Kw`` kept frames at the
data stride with ``rel_pose[k]`` the composed pose from kept frame k to k+1 and ``speed[k]``.
The policy decides at the stride rate (one decision held for ``stride`` native frames), so
for a window the decision frame is ``Kw-2`` (the last one whose next speed is in the window):

    policy input  = frames[Kw-1-K : Kw-1]          (K = the policy's context frames)
    target action = sim.vehicle.inverse(rel_pose[Kw-2], speed[Kw-2], speed[Kw-1], dt=stride/fps)

``inverse`` without the actuator state returns the steady-state command (the achieved
curvature and accel over the interval). That command arrives late: held through the actuator
lag (0.1 s steering, 0.2 s accel) over the interval's four 20 Hz frames, a third of the
curvature driven is still the one the interval started from (``sim.vehicle.held_lag``), so a
clone entering a curve turns in behind the logged driver. ``lag_compensation`` (off by
default) targets the held command that drives the logged move from the actuator state the
previous interval reached instead (``bc_targets``; ``test_bc`` measures both errors).

Which windows count: human-driven decisions (engaged False) and engaged decisions with no
disengagement within ``exclude_before_disengage_s`` (and not censored), so the policy does
not clone the autopilot's mistakes that led to a takeover. Optionally (``min_quality``) only
the engaged decisions of segments whose autopilot quality (the procedural fleet's
``meta.sim.autopilot.quality``, read once from the shards' ``meta.json``) is at least that
value; human-driven decisions (the safety driver's takeovers: good demonstrations) are kept
from every segment, weighted ``human_weight``.

Augmentation: ``pad_prob`` (padded histories, as at episode starts), ``photometric``
(per-window brightness/contrast jitter of +-that fraction: the closed-loop roads differ in
lighting from the training roads), ``viewpoint`` (recovery views, ``rl.viewpoint``: the
frames as seen from a car shifted sideways and turned, with the curvature that steers back to
the logged path; the camera comes from the shards' ``meta.camera``) and ``speed_recovery``
(``SpeedRecovery``: the speed input slower or faster than logged, with the accel that returns
to the logged speed).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from drivegpt.data.camera import Camera
from drivegpt.data.shard_reading import expand_urls
from drivegpt.rl.policy import Policy, PolicyConfig
from drivegpt.rl.viewpoint import ViewpointAugment
from drivegpt.sim.vehicle import ACTION_SCALE, inverse, inverse_sequence
from drivegpt.trainable import EvalSums, valid_rows

# Window keys this module reads; names follow the data.loaders contract.
DISENGAGE_KEYS = ("targets", "disengage_targets")
MASK_KEYS = ("mask", "disengage_mask")


def bc_targets(rel_pose: torch.Tensor, speed: torch.Tensor, dt: float, substeps: int | None = None) -> torch.Tensor:
    """Normalized action [b 2] reproducing the move of decision frame Kw-2.

    rel_pose [b Kw 6], speed [b Kw]; ``dt`` = stride / fps seconds. ``substeps`` (the native
    frames a decision is held for; ``rl.bc.lag_compensation``): the command that, held through
    the actuator lag over that many frames from the actuator state the previous interval
    reached (its achieved curvature and accel, from frame Kw-3), drives the logged move
    (``sim.vehicle.inverse``); None: the steady-state command (the achieved values).
    """
    if rel_pose.shape[1] < 2:
        raise ValueError(f"BC needs windows of >= 2 frames, got rel_pose {tuple(rel_pose.shape)}")
    if substeps is None:
        return inverse(rel_pose[:, -2].float(), speed[:, -2].float(), speed[:, -1].float(), dt=dt)
    if rel_pose.shape[1] < 3:
        raise ValueError(f"rl.bc.lag_compensation needs windows of >= 3 frames (the interval before the decision "
                         f"gives the actuator state), got rel_pose {tuple(rel_pose.shape)}")
    # the intervals Kw-3 and Kw-2, chained: the first one's achieved values are the second one's actuator state
    return inverse_sequence(rel_pose[:, -3:].float(), speed[:, -3:].float(), dt=dt, substeps=int(substeps))[:, -1]


def horizon_index(horizons_s: list[float] | None, horizon_s: float) -> int:
    """Index of ``horizon_s`` in ``data.horizons``; a clear error when it is not one of them."""
    hs = [float(h) for h in (horizons_s or [])]
    j = next((i for i, h in enumerate(hs) if abs(h - float(horizon_s)) < 1e-9), None)
    if j is None:
        raise ValueError(f"rl.bc.accel_horizon_s={horizon_s}: must be one of data.horizons {hs}")
    return j


def horizon_accel(speed: torch.Tensor, speed_ahead: torch.Tensor, horizons_s: list[float] | None,
                  horizon_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean accel over the ``horizon_s`` after the decision frame, (v(t + h) - v(t)) / h in m/s^2
    [b], and where it is known [b] (the log goes on that long).

    speed [b Kw], speed_ahead [b Kw H] (``data.loaders``: the speed each of ``horizons_s`` later).
    A desired-speed policy's accel is gain x (v* - v), i.e. it reaches v* in ~1/gain seconds; the
    matching target is where the driver's speed was that long after, not the 0.2 s accel of the
    decision interval, whose step-to-step noise the speed head would copy into jerk."""
    hs = [float(h) for h in (horizons_s or [])]
    j = horizon_index(hs, horizon_s)
    if speed_ahead.ndim != 3 or speed_ahead.shape[2] != len(hs):
        raise ValueError(f"windows' speed_ahead {tuple(speed_ahead.shape)}: expected [b, Kw, {len(hs)}] (data.horizons)")
    v0 = speed[:, -2].float()
    v1 = speed_ahead[:, -2, j].float()
    known = torch.isfinite(v1)
    return torch.where(known, (v1 - v0) / float(horizon_s), torch.zeros_like(v0)), known


def policy_frames(frames: torch.Tensor, k: int) -> torch.Tensor:
    """The policy's K frames ending at the decision frame: [b Kw H W 3] -> [b K H W 3]."""
    kw = frames.shape[1]
    if kw - 1 < k:
        raise ValueError(f"window of {kw} frames is too short for a policy with K={k} frames "
                         f"(needs K+1; set data.context_frames >= {k + 1})")
    return frames[:, kw - 1 - k: kw - 1]


def _get(batch: dict, names) -> Any:
    for n in names:
        if n in batch:
            return batch[n]
    return None


def bc_weights(batch: dict[str, Any], horizons_s: list[float] | None, exclude_s: float) -> torch.Tensor:
    """Per-window weight [b] in {0, 1}: human-driven or clean engaged decision frames.

    ``disengage targets`` [b Kw n_h 3] (1 = a disengagement of that cause within horizon h)
    with a mask [b Kw n_h] or [b Kw n_h 3] (0 = censored / not engaged). A window is dropped
    when its decision frame is engaged and any horizon <= ``exclude_s`` is positive or
    censored. Without targets in the batch only ``engaged`` is used (all kept).
    """
    engaged = batch["engaged"][:, -2].bool()
    b = engaged.shape[0]
    keep = torch.ones(b, dtype=torch.bool, device=engaged.device)
    tgt = _get(batch, DISENGAGE_KEYS)
    if tgt is None or tgt.ndim != 4:
        return keep.float()
    n_h = tgt.shape[2]
    hs = torch.as_tensor(horizons_s if horizons_s is not None else [float("inf")] * n_h)
    sel = (hs <= exclude_s + 1e-9)
    if not bool(sel.any()):
        sel[0] = True  # at least the shortest horizon
    sel = sel.to(tgt.device)
    t = tgt[:, -2][:, sel]  # [b h' 3]
    pos = (t > 0.5).flatten(1).any(1)
    mask = _get(batch, MASK_KEYS)
    censored = torch.zeros_like(pos)
    if mask is not None and mask.ndim >= 3:
        m = mask[:, -2][:, sel]
        censored = ~(m.bool().flatten(1).all(1))
    bad = engaged & (pos | censored)
    return (keep & ~bad).float()


def _segment_metas(spec):
    """The ``*.meta.json`` members of local tar shards (pipe: URLs are skipped)."""
    import json
    import tarfile

    for url in expand_urls(str(spec)):
        if not str(url).endswith(".tar") or str(url).startswith("pipe:"):
            continue
        with tarfile.open(url) as tar:
            for m in tar:
                if m.name.endswith("meta.json"):
                    yield json.load(tar.extractfile(m))


def segment_qualities(spec) -> dict[str, float]:
    """segment id -> autopilot quality, from the ``*.meta.json`` members of local tar shards
    (procedural fleet: ``meta.sim.autopilot.quality``); segments without one are left out."""
    out: dict[str, float] = {}
    for meta in _segment_metas(spec):
        q = (meta.get("sim") or {}).get("autopilot", {}).get("quality")
        if q is not None:
            out[str(meta["segment_id"])] = float(q)
    return out


def segment_behaviours(spec) -> dict[str, list[tuple[int, int]]]:
    """segment id -> [(first, last) frame] of every logged driver-behaviour episode (weave,
    drift, lane change, hard/late brake, tailgate, surge: ``meta.sim.behaviours.episodes`` of the
    procedural fleet). Segments without the record (real logs) are left out."""
    out: dict[str, list[tuple[int, int]]] = {}
    for meta in _segment_metas(spec):
        beh = (meta.get("sim") or {}).get("behaviours") or {}
        eps = beh.get("episodes") if isinstance(beh, dict) else None
        if eps:
            n = len(meta.get("times", [])) or 10 ** 9
            out[str(meta["segment_id"])] = [(int(e["start"]), int(e["end"]) if e.get("end") is not None else n)
                                            for e in eps if "start" in e]
    return out


def shards_camera(spec) -> Camera:
    """The camera of the shards' segments (``meta.camera``, the schema's required intrinsics); a
    clear error when a segment has none or the segments disagree (one camera per fleet here)."""
    cams = {}
    for meta in _segment_metas(spec):
        sid = str(meta.get("segment_id"))
        cam = Camera.from_meta(meta.get("camera"), where=f"data.shards={spec}: segment {sid!r}, key 'camera'")
        cams.setdefault(cam, sid)
        if len(cams) > 1:
            (a, sa), (b, sb) = list(cams.items())[:2]
            raise ValueError(f"data.shards={spec}: segments {sa!r} and {sb!r} have different cameras ({a} vs "
                             f"{b}); rl.bc.viewpoint needs one camera per fleet")
    if not cams:
        raise ValueError(f"data.shards={spec}: no segment meta.json with a 'camera' (rl.bc.viewpoint needs the "
                         "intrinsics; local .tar shards only)")
    return next(iter(cams))


def in_episodes(frame: torch.Tensor, segment_ids, episodes: dict[str, list[tuple[int, int]]]) -> torch.Tensor:
    """bool [b]: frame[i] of segment_ids[i] lies inside one of that segment's episodes."""
    out = torch.zeros(len(frame), dtype=torch.bool)
    for i, (f, sid) in enumerate(zip(frame.tolist(), segment_ids)):
        out[i] = any(a <= f <= b for a, b in episodes.get(str(sid), ()))
    return out


def photometric(frames: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-window brightness and contrast jitter of +-``amount`` (same for the window's K frames);
    uint8 [b K H W 3] -> uint8."""
    if amount <= 0:
        return frames
    b = frames.shape[0]
    gain = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * amount
    contrast = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * amount
    x = frames.float()
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    x = (x - mean) * contrast.view(b, 1, 1, 1, 1).to(x.device) + mean * gain.view(b, 1, 1, 1, 1).to(x.device)
    return x.clamp(0, 255).to(torch.uint8)


def pad_history(frames: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmentation: with probability ``prob`` per window, replace the first j frames with frame j
    (episodes start with a history padded by the first frame, as in the simulators)."""
    b, k = frames.shape[:2]
    if prob <= 0 or k < 2:
        return frames
    out = frames.clone()
    do = torch.rand(b, generator=generator) < prob
    js = torch.randint(1, k, (b,), generator=generator)
    for i in torch.nonzero(do).flatten().tolist():
        j = int(js[i])
        out[i, :j] = out[i, j: j + 1]
    return out


class SpeedRecovery:
    """Longitudinal recovery views: BC's speed input perturbed, with the accel that returns to the
    logged speed (the longitudinal counterpart of ``rl.viewpoint``'s lateral recovery views).

    A fleet logs the speeds its drivers chose, so BC never sees the car far below (or above) the
    speed a scene calls for, and the policy it trains meets exactly those states once it drifts
    there itself (covariate shift: handed back slow after a takeover, it keeps the speed). Per
    window with probability ``prob`` the decision frame's speed input becomes ``v' = r v``,
    ``r ~ U(min_ratio, max_ratio)``, and the accel target becomes
    ``a + clip((v - v') / tau, -max_correction, max_correction)`` (m/s^2; the logged accel plus a
    first-order return to the logged speed in ``tau`` seconds), clipped to the action range. The
    frames are unchanged: where the drivers would drive is read from the scene and the set speed,
    not from the speed input. The curvature target is unchanged (the path does not depend on the
    speed). Settings: ``rl.bc.speed_recovery`` (README "Policy")."""

    KEYS = ("prob", "min_ratio", "max_ratio", "tau", "max_correction")

    def __init__(self, prob: float = 0.0, min_ratio: float = 0.5, max_ratio: float = 1.4, tau: float = 3.0,
                 max_correction: float = 1.5):
        self.prob, self.min_ratio, self.max_ratio = float(prob), float(min_ratio), float(max_ratio)
        self.tau, self.max_correction = float(tau), float(max_correction)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, where: str = "rl.bc.speed_recovery") -> "SpeedRecovery | None":
        """None when off (no settings or prob 0); an unknown key or a bad value raises naming it."""
        if not settings:
            return None
        settings = dict(settings)
        unknown = sorted(set(settings) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(cls.KEYS)}")
        aug = cls(**{k: float(v) for k, v in settings.items()})
        if not 0.0 <= aug.prob <= 1.0:
            raise ValueError(f"{where}.prob: must be in [0, 1], got {aug.prob}")
        if not 0.0 < aug.min_ratio <= aug.max_ratio:
            raise ValueError(f"{where}: need 0 < min_ratio <= max_ratio, got {aug.min_ratio}, {aug.max_ratio}")
        if aug.tau <= 0 or aug.max_correction < 0:
            raise ValueError(f"{where}: tau must be > 0 and max_correction >= 0, got {aug.tau}, {aug.max_correction}")
        return aug if aug.prob > 0 else None

    def __call__(self, speed: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """speed [b] (m/s), normalized target actions [b 2] -> both augmented (new tensors)."""
        b = speed.shape[0]
        do = (torch.rand(b, generator=generator) < self.prob).to(speed.device)
        r = self.min_ratio + (self.max_ratio - self.min_ratio) * torch.rand(b, generator=generator).to(speed.device)
        v = speed.float()
        v_new = torch.where(do, v * r, v)
        corr = ((v - v_new) / self.tau).clamp(-self.max_correction, self.max_correction)
        out = target.clone()
        out[:, 1] = (target[:, 1] + corr / ACTION_SCALE[1]).clamp(-1.0, 1.0)
        return v_new.to(speed.dtype), out


LOSS_UNITS = ("normalized", "accel")


def accel_unit_weights(speed: torch.Tensor) -> torch.Tensor:
    """Per-sample weights [b, 2] of the two normalized action errors that make the squared error
    one in acceleration units (``rl.bc.loss_units: accel``): a curvature error dk is a lateral
    acceleration error v^2 dk, an accel error da is itself, both over the accel scale (so the
    accel dimension keeps weight 1). The curvature's weight, (v^2 ACTION_SCALE[0] /
    ACTION_SCALE[1])^2, is 16 at 18 m/s; it is floored at 1 (the normalized loss) so that slow
    driving, where a lane is kept by position rather than by lateral acceleration, loses nothing."""
    v2 = speed.float().reshape(-1).pow(2)
    lat = (v2 * ACTION_SCALE[0] / ACTION_SCALE[1]).pow(2).clamp(min=1.0)
    return torch.stack([lat, torch.ones_like(lat)], -1)


class BCModule(L.LightningModule):
    """Lightning module: regress the policy's mean onto inverse-vehicle-model actions."""

    def __init__(self, policy_config: dict, dt: float, lr: float = 3e-4, weight_decay: float = 1e-4,
                 exclude_before_disengage_s: float = 2.0, horizons_s: list[float] | None = None,
                 log_std_target: float = -1.5, pad_prob: float = 0.1, max_steps: int | None = None,
                 min_quality: float | None = None, qualities: dict[str, float] | None = None,
                 human_weight: float = 1.0, photometric: float = 0.0, warmup_steps: int = 0,
                 episodes: dict[str, list[tuple[int, int]]] | None = None, stride: int = 1,
                 viewpoint: dict | None = None, camera: Camera | None = None, loss_units: str = "accel",
                 speed_recovery: dict | None = None, accel_horizon_s: float | None = None,
                 lag_compensation: bool = False, accel_expectile: float = 0.5):
        super().__init__()
        if not 0.0 < float(accel_expectile) < 1.0:
            raise ValueError(f"rl.bc.accel_expectile={accel_expectile}: must be in (0, 1) (0.5: the mean)")
        if loss_units not in LOSS_UNITS:
            raise ValueError(f"rl.bc.loss_units={loss_units!r}: one of {', '.join(LOSS_UNITS)}")
        if accel_horizon_s is not None:
            horizon_index(horizons_s, accel_horizon_s)  # refused here, before any data is read
        self.save_hyperparameters(ignore=["qualities", "episodes", "camera"])
        self.viewpoint = None
        if viewpoint and float(viewpoint.get("prob", 0.0)) > 0:
            if camera is None:
                raise ValueError("rl.bc.viewpoint.prob > 0 needs the fleet's camera (meta.camera)")
            self.viewpoint = ViewpointAugment.from_settings(camera, dict(viewpoint), frame_dt=dt)
        self.speed_recovery = SpeedRecovery.from_settings(speed_recovery)
        self.qualities = dict(qualities or {})
        self.episodes = dict(episodes or {})  # driver-behaviour episodes BC must not imitate
        self.policy = Policy(PolicyConfig.from_dict(policy_config))
        self._sums = EvalSums(("weight", "err_curv", "err_accel", "base_curv", "base_accel"))

    def _prepare(self, batch):
        k = self.policy.cfg.context_frames
        frames = policy_frames(batch["frames"], k)
        speed = batch["speed"][:, -2].float()
        cruise = batch["cruise_speed"][:, -2].float() if "cruise_speed" in batch else None
        substeps = int(self.hparams.stride) if self.hparams.lag_compensation else None  # native frames per decision
        target = bc_targets(batch["rel_pose"], batch["speed"], self.hparams.dt, substeps)
        if self.hparams.accel_horizon_s is not None:  # the accel that reaches the speed h seconds on
            if "speed_ahead" not in batch:
                raise ValueError("rl.bc.accel_horizon_s needs the windows' 'speed_ahead' (data.loaders)")
            acc, known = horizon_accel(batch["speed"], batch["speed_ahead"], self.hparams.horizons_s,
                                       self.hparams.accel_horizon_s)
            acc = (acc / ACTION_SCALE[1]).clamp(-1.0, 1.0).to(target.dtype)
            target = torch.stack([target[:, 0], torch.where(known, acc, target[:, 1])], dim=-1)
        w = bc_weights(batch, self.hparams.horizons_s, self.hparams.exclude_before_disengage_s)
        engaged = batch["engaged"][:, -2].bool().to(w.device)
        if self.hparams.min_quality is not None and "segment_id" in batch:
            q = torch.tensor([self.qualities.get(str(s), 1.0) for s in batch["segment_id"]], device=w.device)
            w = w * (~engaged | (q >= float(self.hparams.min_quality))).float()
        if self.episodes and "segment_id" in batch and "start" in batch:
            # the decision frame (the window's second-to-last) inside a logged weave, drift, lane
            # change or hard brake: the autopilot's deliberate deviation, not driving to imitate
            k_win = batch["rel_pose"].shape[1]
            frame = torch.as_tensor(batch["start"]).long().cpu() + (k_win - 2) * int(self.hparams.stride)
            inside = in_episodes(frame, batch["segment_id"], self.episodes).to(w.device)
            w = w * (~(engaged & inside)).float()
        if self.hparams.human_weight != 1.0:
            w = torch.where(engaged, w, w * float(self.hparams.human_weight))
        return frames, speed, cruise, target, w

    def training_step(self, batch, batch_idx):
        frames, speed, cruise, target, w = self._prepare(batch)
        if self.viewpoint is not None:  # recovery views: shifted / turned car, corrected curvature
            frames, target = self.viewpoint(frames, speed, target)
        # the curvature error's weight is the logged path's lateral acceleration: the logged speed's
        dim_weight = accel_unit_weights(speed) if self.hparams.loss_units == "accel" else None
        if self.speed_recovery is not None:  # the car slower / faster than logged, the accel back to the log
            speed, target = self.speed_recovery(speed, target)
        frames = pad_history(frames, self.hparams.pad_prob)
        frames = photometric(frames, float(self.hparams.photometric))
        tau = float(self.hparams.accel_expectile)
        loss, parts = self.policy.compute_loss({"frames": frames, "speed": speed, "cruise": cruise, "target": target,
                                                "weight": w, "dim_weight": dim_weight,
                                                "expectile": None if tau == 0.5 else (0.5, tau)},
                                               log_std_target=self.hparams.log_std_target)
        self.log("train/loss", loss, prog_bar=True, batch_size=frames.shape[0])
        self.log("train/kept_fraction", parts["kept_fraction"], batch_size=frames.shape[0])
        return loss

    def on_validation_epoch_start(self):
        self._sums.reset()

    def validation_step(self, batch, batch_idx):
        """Weighted absolute errors summed over the batch's real windows (padding rows from
        several ranks get weight 0); pooled over the whole held-out set at epoch end."""
        frames, speed, cruise, target, w = self._prepare(batch)
        w = w * valid_rows(batch, w.shape[0], w.device).float()
        mean, _, _ = self.policy(frames, speed, cruise)
        err = ((mean - target).abs() * w[:, None]).sum(0)
        base = (target.abs() * w[:, None]).sum(0)  # the do-nothing baseline (cruise straight): what BC must beat
        self._sums.add(weight=w.sum(), err_curv=err[0], err_accel=err[1], base_curv=base[0], base_accel=base[1])

    def on_validation_epoch_end(self):
        s = self._sums.reduce(self)
        n = max(s["weight"], 1.0)
        mae = torch.tensor([s["err_curv"], s["err_accel"]]) / n
        base = torch.tensor([s["base_curv"], s["base_accel"]]) / n
        self.log("val/action_mae", float(mae.mean()), prog_bar=True, sync_dist=True)
        self.log("val/curvature_mae", float(mae[0] * ACTION_SCALE[0]), sync_dist=True)
        self.log("val/accel_mae", float(mae[1] * ACTION_SCALE[1]), sync_dist=True)
        self.log("val/zero_action_mae", float(base.mean()), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.policy.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        if self.hparams.max_steps and self.hparams.max_steps > 0:
            total, warm = int(self.hparams.max_steps), int(self.hparams.warmup_steps or 0)

            def factor(step: int) -> float:  # linear warm-up, then cosine to 0
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt
