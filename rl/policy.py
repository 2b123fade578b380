"""The driving policy: last K camera frames + speed -> Gaussian over normalized actions + value.

Architecture (per call, ``b`` batch, ``K`` context frames, ``H x W`` pixels):

    frames uint8 [b K H W 3] --/127.5 - 1--> shared MobileNetV2-style trunk per frame
      (stem conv; stride-2 inverted-residual blocks: 1x1 expand, 3x3 depthwise, 1x1 project,
      BatchNorm + ReLU; ``extra_blocks`` stride-1 residual blocks at the end)
      -> average pool to a small grid (keeps where the lanes are) -> linear -> feature [b K c]
      -> concat over K -> MLP -> z [b d] in (-1, 1) (tanh)
      -> information bottleneck: z + N(0, noise_std^2)   (training; the mean z at eval/export)
      -> concat speed/speed_scale (with ``cruise``: and the cruise set speed / speed_scale and
         whether it is known) -> actor MLP -> mean [b 2] (tanh, in [-1, 1])
                                  -> critic MLP -> value [b]
    log_std [2]: a learned state-independent parameter (clamped).

With ``longitudinal: speed`` the actor outputs the curvature only, and a speed head reads z and the
cruise features but *not* the speed: desired speed v* [b] -> accel = tanh(speed_gain (v* - v) /
ACTION_SCALE[1]) (normalized). A cloned accel head can ignore the car's own speed and repeat the
fleet's average accel; this one always closes the gap to the speed the scene is driven at.

The bottleneck is an additive-Gaussian channel on a bounded feature (|z| < 1, signal power
<= 1), so its capacity is at most ``d * 0.5 * log2(1 + 1/noise_std^2)`` bits per decision
(``Policy.bottleneck_bits``); with the defaults (d=128, noise_std=0.1) that is ~426 bits, the
order comma uses (~700 bits), so the policy cannot read fine artefacts of the world model.

The trunk is the mobile family openpilot's vision model belongs to (EfficientNet's MBConv):
depthwise-separable convolutions with BatchNorm fold into a few fused Conv(+ReLU) kernels on
ONNX Runtime and the QNN HTP. BatchNorm statistics are learnt in behaviour cloning and frozen
for RL (``Policy.freeze_norm``), so rollouts and PPO updates see the same network.

The cruise set speed (``PolicyConfig.cruise``; the fleet log's ``meta.cruise_speed``, data.schema)
is the speed the driver asked for, as openpilot's planner reads v_cruise: nothing in a frame
shows the speed limit, and without it a policy cloned from a fleet that slows on average over
its segments creeps slower and slower (GAS takeovers). An unknown set speed (NaN, 0, or not
passed) is a zero feature with its known-flag off.

Actions are the normalized Box(2) of ``sim.vehicle``: (desired curvature, desired accel) in
[-1, 1]. Sampled actions are Gaussian (unbounded); environments clip them to the box.

Checkpoints (``save_policy`` / ``load_policy``) are in ``drivegpt.rl.checkpoint``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from einops import rearrange
from torch import nn

from drivegpt.settings import check_keys, plain
from drivegpt.sim.vehicle import ACTION_SCALE, limit_jerk

ACTION_DIM = 2


class PolicyInputError(ValueError):
    """Observation of the wrong shape/dtype, or NaN/inf in it."""


@dataclass
class PolicyConfig:
    context_frames: int = 4          # K frames per decision
    frame_height: int = 128
    frame_width: int = 256
    channels: tuple[int, ...] = (16, 24, 32, 64)   # stem conv, then one stride-2 inverted-residual block each
    expand: int = 3                  # inverted-residual expansion ratio (hidden = expand x input channels)
    extra_blocks: int = 1            # stride-1 residual blocks after the last stage
    pool_grid: tuple[int, int] = (4, 8)  # trunk output average-pooled to this grid (keeps where things are)
    frame_features: int = 64         # per-frame feature (linear map of the pooled grid)
    bottleneck_dim: int = 128        # d: size of the noisy feature vector
    noise_std: float = 0.1           # bottleneck noise std (on tanh features in (-1, 1))
    hidden: int = 128                # actor/critic MLP width
    speed_scale: float = 30.0        # speed [m/s] is divided by this before the heads
    cruise: bool = False             # the heads also read the cruise set speed (m/s; NaN or 0 = unknown)
    longitudinal: str = "accel"      # "accel": the actor outputs the accel; "speed": a head that does not read
                                     # the speed outputs a desired speed v*, accel = speed_gain (v* - v) (README)
    speed_gain: float = 0.5          # 1/s: the accel per m/s of speed below the desired speed ("speed" only)
    max_lat_accel: float | None = None  # m/s^2: the comfort envelope, as openpilot's clip_curvature: the
                                     # curvature is clipped to |k| <= max_lat_accel / v^2 (null: no envelope)
    max_jerk: float | None = None    # m/s^3: the longitudinal comfort envelope of the policy's controls: at each
                                     # decision the accel command stays within max_jerk x tau_accel of the car's
                                     # own accel (``controls``; outside the graph: it reads the car's accel)
    init_log_std: float = -1.0
    min_log_std: float = -5.0
    max_log_std: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PolicyConfig":
        d = plain(d)
        check_keys(d, {f.name for f in fields(cls)}, "rl.policy")
        for key in ("channels", "pool_grid"):
            if key in d:
                d[key] = tuple(int(c) for c in d[key])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["pool_grid"] = list(self.pool_grid)
        return d

    @property
    def obs_shape(self) -> tuple[int, int, int, int]:
        return (self.context_frames, self.frame_height, self.frame_width, 3)

    def __post_init__(self):
        if self.longitudinal not in LONGITUDINAL:
            raise ValueError(f"rl.policy.longitudinal={self.longitudinal!r}: one of {', '.join(LONGITUDINAL)}")
        if not self.speed_gain > 0:
            raise ValueError(f"rl.policy.speed_gain={self.speed_gain}: must be > 0 (1/s)")
        if self.max_lat_accel is not None and not (math.isfinite(self.max_lat_accel) and self.max_lat_accel > 0):
            raise ValueError(f"rl.policy.max_lat_accel={self.max_lat_accel}: must be > 0 (m/s^2) or null (no envelope)")
        if self.max_jerk is not None and not (math.isfinite(self.max_jerk) and self.max_jerk > 0):
            raise ValueError(f"rl.policy.max_jerk={self.max_jerk}: must be > 0 (m/s^3) or null (no envelope)")


LONGITUDINAL = ("accel", "speed")


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    """Conv (no bias: BatchNorm has it) + BatchNorm (+ ReLU): one fused Conv kernel after export."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear project (+ skip)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.block = nn.Sequential(
            *_conv_bn(c_in, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, c_out, 1, relu=False),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n c h w] -> [n c' h/s w/s]
        y = self.block(x)
        return x + y if self.residual else y


def _trunk(cfg: PolicyConfig) -> nn.Sequential:
    if not cfg.channels:
        raise ValueError("PolicyConfig.channels: needs at least the stem's channel count")
    c_in = cfg.channels[0]
    layers: list[nn.Module] = _conv_bn(3, c_in, 3, stride=2)
    for c in cfg.channels[1:]:
        layers.append(InvertedResidual(c_in, c, 2, cfg.expand))
        c_in = c
    layers += [InvertedResidual(c_in, c_in, 1, cfg.expand) for _ in range(cfg.extra_blocks)]
    gh, gw = cfg.pool_grid
    layers += [nn.AdaptiveAvgPool2d((gh, gw)), nn.Flatten(), nn.Linear(c_in * gh * gw, cfg.frame_features),
               nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Policy(nn.Module):
    def __init__(self, cfg: PolicyConfig | dict | None = None):
        super().__init__()
        if not isinstance(cfg, PolicyConfig):
            cfg = PolicyConfig.from_dict(cfg)
        self.cfg = cfg
        self.trunk = _trunk(cfg)
        self.fuse = nn.Sequential(
            nn.Linear(cfg.context_frames * cfg.frame_features, cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, cfg.bottleneck_dim), nn.Tanh(),
        )
        n_state = 3 if cfg.cruise else 1  # speed (+ cruise set speed, known flag)
        by_speed = cfg.longitudinal == "speed"
        self.actor = nn.Sequential(
            nn.Linear(cfg.bottleneck_dim + n_state, cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, ACTION_DIM - int(by_speed))
        )
        # "speed": the desired speed v* from the frames (and the set speed), never from the speed
        # itself, so the accel that closes the gap cannot collapse to a copy of the fleet's average
        self.speed_head = nn.Sequential(
            nn.Linear(cfg.bottleneck_dim + n_state - 1, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1)
        ) if by_speed else None
        self.critic = nn.Sequential(
            nn.Linear(cfg.bottleneck_dim + n_state, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1)
        )
        self.log_std = nn.Parameter(torch.full((ACTION_DIM,), float(cfg.init_log_std)))
        nn.init.zeros_(self.actor[-1].bias)
        self.actor[-1].weight.data.mul_(0.1)
        if self.speed_head is not None:  # start at half the speed scale (15 m/s by default)
            nn.init.constant_(self.speed_head[-1].bias, 0.5)
            self.speed_head[-1].weight.data.mul_(0.1)
        self.norm_frozen = False
        # RL: the critic reads the features without sending gradients into them, so value
        # regression on a fresh critic cannot overwrite what BC taught the trunk
        self.detach_critic = False

    def freeze_norm(self, frozen: bool = True) -> "Policy":
        """Keep BatchNorm on its running statistics even in train mode (RL: the batch is a set of
        correlated env steps, and rollouts and updates must see one network)."""
        self.norm_frozen = frozen
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Policy":
        super().train(mode)
        if self.norm_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ---------------------------------------------------------------- properties
    @property
    def obs_shape(self) -> tuple[int, int, int, int]:
        return self.cfg.obs_shape

    @property
    def bottleneck_bits(self) -> float:
        """Upper bound on the bottleneck's capacity in bits (Gaussian channel, power <= 1)."""
        return self.cfg.bottleneck_dim * 0.5 * math.log2(1.0 + 1.0 / self.cfg.noise_std**2)

    # ---------------------------------------------------------------- checks
    def check_obs(self, frames: torch.Tensor, speed: torch.Tensor, cruise: torch.Tensor | None = None) -> None:
        """Raise ``PolicyInputError`` for a wrong shape/dtype or non-finite speed (a cruise set
        speed may be NaN: unknown)."""
        exp = self.obs_shape
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
            raise PolicyInputError(
                f"policy observation 'frames': expected uint8 tensor [b,{','.join(map(str, exp))}], "
                f"got {getattr(frames, 'dtype', type(frames).__name__)}")
        if frames.ndim != 5 or tuple(frames.shape[1:]) != exp:
            raise PolicyInputError(
                f"policy observation 'frames': shape {tuple(frames.shape)}, expected [b, {', '.join(map(str, exp))}] "
                f"(this policy was built for K={exp[0]} frames of {exp[1]}x{exp[2]})")
        if not isinstance(speed, torch.Tensor) or speed.reshape(-1).shape[0] != frames.shape[0]:
            raise PolicyInputError(
                f"policy observation 'speed': expected a float tensor with one value per batch item "
                f"({frames.shape[0]}), got {tuple(getattr(speed, 'shape', ()))}")
        if not bool(torch.isfinite(speed).all()):
            raise PolicyInputError("policy observation 'speed' contains NaN or inf")
        if cruise is not None and (not isinstance(cruise, torch.Tensor)
                                   or cruise.reshape(-1).shape[0] != frames.shape[0]):
            raise PolicyInputError(
                f"policy observation 'cruise': expected a float tensor with one cruise set speed (m/s, NaN = "
                f"unknown) per batch item ({frames.shape[0]}), got {tuple(getattr(cruise, 'shape', ()))}")
        if cruise is not None and bool(torch.isinf(cruise).any()):
            raise PolicyInputError("policy observation 'cruise' contains inf (NaN or 0 mean: not known)")

    # ---------------------------------------------------------------- network
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [b K H W 3] -> bottleneck mean z [b d] in (-1, 1)."""
        b = frames.shape[0]
        x = rearrange(frames, "b k h w c -> (b k) c h w").to(self.log_std.dtype)
        x = x * (1.0 / 127.5) - 1.0
        f = self.trunk(x)  # [(b k) c]
        f = rearrange(f, "(b k) c -> b (k c)", b=b)
        return self.fuse(f)

    def cruise_features(self, cruise: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """[b 2] (``cfg.cruise`` policies): the cruise set speed / speed_scale (0 when unknown) and a
        known flag. Unknown: None, NaN or <= 0 (``c > 0`` is false for NaN; plain comparisons export
        to ONNX and QNN). +inf is not a set speed the policy can read: ``check_obs`` refuses it."""
        if cruise is None:
            cruise = torch.zeros_like(like[:, :1])
        c = cruise.reshape(-1, 1).to(like.dtype)
        known = c > 0
        c = torch.where(known, c, torch.zeros_like(c)) / self.cfg.speed_scale
        return torch.cat([c, known.to(like.dtype)], dim=-1)

    def desired_speed(self, z: torch.Tensor, cruise: torch.Tensor | None = None,
                      cruise_feats: torch.Tensor | None = None) -> torch.Tensor:
        """``longitudinal: speed``: the desired speed v* [b] in m/s from the features z and the set
        speed (not the speed); ``cruise_feats`` (``cruise_features``) when already computed."""
        if self.speed_head is None:
            raise ValueError("desired_speed: only a policy with rl.policy.longitudinal=speed has one")
        x = z
        if self.cfg.cruise:
            x = torch.cat([z, self.cruise_features(cruise, z) if cruise_feats is None else cruise_feats], -1)
        return self.speed_head(x).squeeze(-1) * self.cfg.speed_scale

    def heads(self, z: torch.Tensor, speed: torch.Tensor, cruise: torch.Tensor | None = None):
        feats = self.cruise_features(cruise, z) if self.cfg.cruise else None
        s = speed.reshape(-1, 1).to(z.dtype) / self.cfg.speed_scale
        h = torch.cat([z, s] if feats is None else [z, s, feats], dim=-1)  # the actor's and critic's input
        mean = torch.tanh(self.actor(h))
        v = speed.reshape(-1).to(z.dtype)
        if self.speed_head is not None:  # accel = gain (v* - v), normalized like every action
            gap = self.desired_speed(z, cruise_feats=feats) - v
            accel = torch.tanh(gap * (self.cfg.speed_gain / ACTION_SCALE[1]))
            mean = torch.cat([mean, accel[:, None]], dim=-1)
        if self.cfg.max_lat_accel is not None:
            mean = torch.cat([self.lat_envelope(mean[:, :1], s), mean[:, 1:]], dim=-1)
        value = self.critic(h.detach() if self.detach_critic else h).squeeze(-1)
        log_std = self.log_std.clamp(self.cfg.min_log_std, self.cfg.max_log_std).expand_as(mean)
        return mean, log_std, value

    def lat_envelope(self, curvature: torch.Tensor, speed_feature: torch.Tensor) -> torch.Tensor:
        """The normalized curvature [b 1] clipped to the comfort envelope |k| <= max_lat_accel / v^2
        (``cfg.max_lat_accel``); ``speed_feature`` [b 1] is the heads' speed / speed_scale.

        Built for 8-bit graphs: the bound is min(c / max(v, 1 m/s), 1)^2 (c^2 = max_lat_accel / the
        curvature's scale), so every tensor of it lies in [0, 1] or near it and keeps its precision at
        highway speed; it is read from the heads' own speed feature (a quantized tensor), and the
        floor and ceiling are ReLUs, because the QNN HTP refuses a Clip on the float graph input.
        The element-wise min/max then export to ONNX and the HTP as part of the graph."""
        floor = 1.0 / self.cfg.speed_scale  # 1 m/s
        v = torch.relu(speed_feature - floor) + floor
        r = (math.sqrt(self.cfg.max_lat_accel / ACTION_SCALE[0]) / self.cfg.speed_scale) / v  # c / v
        r = 1.0 - torch.relu(1.0 - r)  # at most 1: the whole action range fits below c m/s
        bound = r * r
        return torch.maximum(torch.minimum(curvature, bound), -bound)

    def forward(self, frames: torch.Tensor, speed: torch.Tensor, cruise: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, bottleneck: bool | None = None):
        """(frames uint8 [b K H W 3], speed float32 [b], cruise float32 [b] or None) -> (mean [b 2],
        log_std [b 2], value [b]). ``cruise``: the cruise set speed in m/s (NaN or None: unknown;
        read only with ``cfg.cruise``).

        The bottleneck noise is on when ``bottleneck`` is True (default: ``self.training``);
        ``noise`` [b d] (standard normal) can be passed to reuse a sample (PPO re-evaluation).
        """
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self.check_obs(frames, speed, cruise)
        z = self.features(frames)
        on = self.training if bottleneck is None else bottleneck
        if on:
            if noise is None:
                noise = torch.randn_like(z)
            z = z + self.cfg.noise_std * noise
        return self.heads(z, speed, cruise)

    def sample_noise(self, batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(batch, self.cfg.bottleneck_dim, device=device or self.log_std.device,
                           generator=generator)

    @torch.no_grad()
    def act(self, frames: torch.Tensor, speed: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None, cruise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized action [b 2]: the mean (deterministic, bottleneck off) or a sample clipped to [-1, 1]."""
        mean, log_std, _ = self(frames, speed, cruise, bottleneck=not deterministic and self.training)
        if deterministic:
            return mean
        eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        return (mean + log_std.exp() * eps).clamp(-1.0, 1.0)

    def controls(self, action, accel_now):
        """The action the car is sent: ``action`` [b 2] (normalized) with the longitudinal comfort
        envelope applied when ``cfg.max_jerk`` is set (``drivegpt.sim.vehicle.limit_jerk``: the accel
        command within max_jerk x tau_accel of ``accel_now`` [b], the car's accel in m/s^2). Every
        runner calls it at each decision: the closed loop, the learned sim's env for RL and its
        scoring. It is not part of the exported graph, which has no accel input: on a car the controls
        apply it, as openpilot's do to its model's plan."""
        if self.cfg.max_jerk is None:
            return action
        return limit_jerk(action, accel_now, self.cfg.max_jerk)

    def compute_loss(self, batch: dict, *, log_std_target: float = -1.5,
                     log_std_weight: float = 0.01) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The trainable contract (drivegpt.trainable) for supervised actions (behaviour cloning).

        ``batch``: frames uint8 [b,K,H,W,3], speed [b], optionally cruise [b] (m/s, NaN = unknown),
        target normalized actions [b,2], weight [b]
        (0 drops a sample), optionally ``dim_weight`` [b,2] (each action dimension's weight per
        sample; default 1), optionally ``expectile`` [2] (each dimension's expectile tau: an error
        where the target is above the mean weighs 2 tau, below it 2 (1 - tau); 0.5 is the plain
        squared error). Loss = weighted mean squared error of the mean action + a pull of
        log_std toward ``log_std_target`` (exploration kept for RL)."""
        mean, log_std, _ = self(batch["frames"], batch["speed"], batch.get("cruise"))
        w = batch["weight"]
        diff = batch["target"] - mean
        err = diff.pow(2)
        if batch.get("expectile") is not None:
            tau = torch.as_tensor(batch["expectile"], dtype=err.dtype, device=err.device)
            err = err * 2.0 * torch.where(diff > 0, tau, 1.0 - tau)
        if batch.get("dim_weight") is not None:
            err = err * batch["dim_weight"].to(err.dtype)
        action = (err.sum(-1) * w).sum() / w.sum().clamp(min=1.0)
        prior = (log_std - log_std_target).pow(2).mean()
        loss = action + log_std_weight * prior
        return loss, {"loss": loss, "action_mse": action, "log_std_prior": prior, "kept_fraction": w.mean()}

    def export_module(self) -> nn.Module:
        """Deterministic deployable module: (frames uint8 [1 K H W 3], speed f32 [1 1]) -> action f32 [1 2];
        with ``cfg.cruise`` a third input, cruise f32 [1 1] (m/s, NaN = unknown)."""
        return ExportedPolicy(self)


class ExportedPolicy(nn.Module):
    """The policy with its bottleneck at its mean and the action at the Gaussian's mean."""

    def __init__(self, policy: Policy):
        super().__init__()
        import copy

        self.policy = copy.deepcopy(policy).eval()
        for p in self.policy.parameters():
            p.requires_grad_(False)

    def forward(self, frames: torch.Tensor, speed: torch.Tensor, cruise: torch.Tensor | None = None) -> torch.Tensor:
        z = self.policy.features(frames)
        mean, _, _ = self.policy.heads(z, speed, cruise)
        return mean.to(torch.float32)


def gaussian_log_prob(action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Sum over action dims of the diagonal Gaussian log density; [b 2] -> [b]."""
    var = (2 * log_std).exp()
    return (-((action - mean) ** 2) / (2 * var) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> torch.Tensor:
    """KL(p || q) for diagonal Gaussians, summed over action dims; [b 2] -> [b]."""
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


# -------------------------------------------------------------------- FLOPs
def count_flops(policy: Policy, height: int | None = None, width: int | None = None) -> dict[str, float]:
    """Multiply-accumulates x2 of conv/linear layers for one decision (batch 1).

    Returns {"flops_per_call", "flops_per_frame" (the trunk on one frame), "params"}.
    ``height``/``width`` default to the policy's frame size (the trunk is size-agnostic).
    """
    cfg = policy.cfg
    h = height or cfg.frame_height
    w = width or cfg.frame_width
    totals = {"trunk": 0, "rest": 0}

    def hook(name):
        def f(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                macs = out.numel() * k
            else:
                macs = out.numel() * mod.in_features
            totals[name] += 2 * macs
        return f

    handles = []
    for m in policy.trunk.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook("trunk")))
    for part in (policy.fuse, policy.actor, policy.critic, policy.speed_head):
        for m in part.modules() if part is not None else ():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                handles.append(m.register_forward_hook(hook("rest")))
    was_training = policy.training
    policy.eval()  # BatchNorm must not update its running statistics on the probe frame
    try:
        with torch.no_grad():
            frame = torch.zeros(1, 3, h, w)
            policy.trunk(frame.to(policy.log_std.device))
            per_frame = totals["trunk"]
            z = torch.zeros(1, cfg.bottleneck_dim, device=policy.log_std.device)
            policy.fuse(torch.zeros(1, cfg.context_frames * cfg.frame_features, device=z.device))
            policy.heads(z, torch.zeros(1, device=z.device))
    finally:
        for hd in handles:
            hd.remove()
        policy.train(was_training)
    return {
        "flops_per_frame": float(per_frame),
        "flops_per_call": float(per_frame * cfg.context_frames + totals["rest"]),
        "params": float(sum(p.numel() for p in policy.parameters())),
    }


def policy_config_from_cfg(cfg) -> PolicyConfig:
    """The PolicyConfig of a stage config: ``cfg.rl.policy`` + frame size/K from ``cfg.data``."""
    from omegaconf import OmegaConf

    p = OmegaConf.to_container(cfg.rl.policy, resolve=True) if "policy" in cfg.rl else {}
    p = dict(p)
    p.setdefault("frame_height", int(cfg.data.frame_height))
    p.setdefault("frame_width", int(cfg.data.frame_width))
    p.setdefault("context_frames", int(cfg.rl.get("context_frames") or cfg.data.context_frames))
    return PolicyConfig.from_dict(p)


__all__ = [
    "ACTION_DIM", "Policy", "PolicyConfig", "PolicyInputError", "ExportedPolicy", "count_flops", "gaussian_log_prob",
    "gaussian_entropy", "gaussian_kl", "policy_config_from_cfg",
]
