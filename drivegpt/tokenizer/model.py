"""The convolutional VQ autoencoder (VQ-GAN / commaVQ family) and its checkpoint format.

    tok = Tokenizer(cfg)                    # cfg: the ``tokenizer`` config group
    tokens = tok.encode(frames)             # uint8 [b, h, w, 3] -> int64 [b, h', w']
    frames = tok.decode(tokens)             # int64 [b, h', w'] -> uint8 [b, h, w, 3]
    feats = tok.embed(tokens)               # -> float [b, h', w', d]
    tok = load_tokenizer("run/tokenizer.pt")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import nn

from drivegpt.checkpoints import TOKENIZER, read_artifact, save_artifact
from drivegpt.settings import check_keys
from drivegpt.tokenizer.losses import ReconstructionLoss
from drivegpt.tokenizer.quantizers import build_quantizer

CHECKPOINT_KIND = TOKENIZER
# Keys that change the shape of the network or of its tokens: a checkpoint must agree on them.
SHAPE_KEYS = ("frame_height", "frame_width", "downsample", "quantizer", "codebook_size", "embed_dim",
              "channels", "channel_mult", "res_blocks", "attn_blocks")
# The value a checkpoint written before a shape key existed was built with.
SHAPE_DEFAULTS = {"attn_blocks": 0}


# The names of the ``tokenizer`` config group (values and defaults: configs/tokenizer/default.yaml).
CONFIG_SCHEMA = {
    **dict.fromkeys(("frame_height", "frame_width", "downsample", "channels", "channel_mult", "res_blocks",
                     "attn_blocks", "embed_dim", "quantizer", "codebook_size", "train_steps", "train_seconds", "batch_size",
                     "image_every_n_steps")),
    "vq": dict.fromkeys(("decay", "commitment", "kmeans_init", "kmeans_iters", "dead_after", "l2_normalize")),
    "fsq": dict.fromkeys(("levels",)),
    "loss": dict.fromkeys(("l1", "mse", "ssim", "gradient", "edge", "gan", "gan_start", "disc_channels", "disc_layers")),
    "optim": dict.fromkeys(("lr", "disc_lr", "betas", "weight_decay", "warmup_steps", "min_lr_ratio")),
}


class TokenizerInputError(ValueError):
    """Frames or tokens of the wrong shape/dtype, or a checkpoint that does not match."""


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if ch % g == 0 and ch // g >= 2:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(_groups(cout), cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class AttnBlock(nn.Module):
    """Self-attention over the positions of the token grid (VQ-GAN's mid block): every token
    sees the whole frame, so far, thin structure (lane markings near the horizon) can be
    inferred from the near road it continues. 128 positions at 8x16: cheap next to the convs."""

    def __init__(self, ch: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity: the conv path trains as before
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (t n d) h w -> t b n (h w) d", t=3, n=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(y, "b n (h w) d -> b (n d) h w", h=h, w=w))


def level_channels(cfg) -> list[int]:
    """Channels at each resolution level 0..n_down (level i has stride 2**i)."""
    n_down = int(round(math.log2(int(cfg.downsample))))
    if 2 ** n_down != int(cfg.downsample) or n_down < 1:
        raise ValueError(f"tokenizer.downsample={cfg.downsample}: must be a power of two >= 2")
    mult = list(cfg.channel_mult)
    return [int(cfg.channels) * int(mult[min(i, len(mult) - 1)]) for i in range(n_down + 1)]


class Encoder(nn.Module):
    """float [b, 3, h, w] in [-1, 1] -> float [b, embed_dim, h/f, w/f]."""

    def __init__(self, cfg):
        super().__init__()
        chs = level_channels(cfg)
        layers: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, padding=1)]
        for i in range(len(chs) - 1):
            layers += [ResBlock(chs[i], chs[i]) for _ in range(int(cfg.res_blocks))]
            layers.append(nn.Conv2d(chs[i], chs[i + 1], 4, stride=2, padding=1))  # downsample
        layers += [ResBlock(chs[-1], chs[-1]) for _ in range(int(cfg.res_blocks))]
        layers += [AttnBlock(chs[-1]) for _ in range(int(cfg.get("attn_blocks") or 0))]
        layers += [nn.GroupNorm(_groups(chs[-1]), chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], int(cfg.embed_dim), 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """float [b, embed_dim, h/f, w/f] -> float [b, 3, h, w] (unbounded; ~[-1, 1])."""

    def __init__(self, cfg):
        super().__init__()
        chs = level_channels(cfg)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(int(cfg.embed_dim), chs[0], 3, padding=1)]
        layers += [AttnBlock(chs[0]) for _ in range(int(cfg.get("attn_blocks") or 0))]
        layers += [ResBlock(chs[0], chs[0]) for _ in range(int(cfg.res_blocks))]
        for i in range(len(chs) - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chs[i], chs[i + 1], 3, padding=1)]
            layers += [ResBlock(chs[i + 1], chs[i + 1]) for _ in range(int(cfg.res_blocks))]
        layers += [nn.GroupNorm(_groups(chs[-1]), chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [b, h, w, 3] -> float32 [b, 3, h, w] in [-1, 1], contiguous (a channels-last view of
    the HWC frames makes oneDNN pick channels-last kernels: a CPU training step ~8% slower)."""
    return rearrange(frames, "b h w c -> b c h w").float().contiguous().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [b, 3, h, w] in [-1, 1] -> uint8 [b, h, w, 3]."""
    x = x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c")


class Tokenizer(nn.Module):
    """VQ autoencoder: encoder -> quantizer (EMA-VQ or FSQ) -> decoder."""

    CPU_CHUNK = 16

    def __init__(self, cfg: Mapping[str, Any] | DictConfig):
        super().__init__()
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        check_keys(cfg, CONFIG_SCHEMA, "tokenizer")
        self.cfg = cfg
        h, w, f = int(cfg.frame_height), int(cfg.frame_width), int(cfg.downsample)
        if h % f or w % f:
            raise ValueError(f"tokenizer: frame size {h}x{w} is not divisible by downsample={f}")
        self.frame_size = (h, w)
        self.grid = (h // f, w // f)
        self.encoder = Encoder(cfg)
        self.quantizer = build_quantizer(cfg, int(cfg.embed_dim))
        self.decoder = Decoder(cfg)
        loss = cfg.get("loss") or {}
        self.rec_loss = ReconstructionLoss(loss.get("l1", 1.0), loss.get("mse", 1.0), loss.get("ssim", 0.0),
                                           loss.get("gradient", 0.0), loss.get("edge", 0.0))  # no parameters or buffers

    @property
    def vocab_size(self) -> int:
        return int(self.quantizer.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- validation ---------------------------------------------------------------------------
    def check_frames(self, frames, where: str = "frames") -> torch.Tensor:
        if not isinstance(frames, torch.Tensor):
            frames = torch.as_tensor(frames)
        h, w = self.frame_size
        if frames.dtype != torch.uint8:
            raise TokenizerInputError(f"{where}: dtype {frames.dtype}, expected uint8 RGB frames [b,{h},{w},3]")
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (h, w, 3):
            raise TokenizerInputError(f"{where}: shape {tuple(frames.shape)}, expected [b, {h}, {w}, 3] "
                                      f"(this tokenizer was built for {h}x{w} frames)")
        return frames

    def check_tokens(self, tokens, where: str = "tokens") -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TokenizerInputError(f"{where}: dtype {tokens.dtype}, expected integer token ids")
        gh, gw = self.grid
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (gh, gw):
            raise TokenizerInputError(f"{where}: shape {tuple(tokens.shape)}, expected [b, {gh}, {gw}]")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise TokenizerInputError(f"{where}: ids outside [0, {self.vocab_size})")
        return tokens.long()

    # -- training path --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """x float [b, 3, h, w] in [-1, 1] -> (recon float [b,3,h,w], indices [b,h',w'], q_loss)."""
        z = self.encoder(x)
        z_q, indices, q_loss = self.quantizer(z)
        return self.decoder(z_q), indices, q_loss

    # -- inference API --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 [b, h, w, 3] -> int64 [b, h', w'] (on the model's device)."""
        frames = self.check_frames(frames)
        out = []
        for i in range(0, max(len(frames), 1), self._chunk()):
            x = to_float(frames[i:i + self._chunk()].to(self.device))
            out.append(self.quantizer(self.encoder(x))[1].long())
        return torch.cat(out)

    @torch.no_grad()
    def embed(self, tokens) -> torch.Tensor:
        """int64 [b, h', w'] -> float [b, h', w', embed_dim] (the decoder's input features)."""
        return self.quantizer.embed_tokens(self.check_tokens(tokens).to(self.device))

    @torch.no_grad()
    def decode(self, tokens) -> torch.Tensor:
        """int64 [b, h', w'] -> uint8 [b, h, w, 3]."""
        feats = self.embed(tokens)
        dtype = next(self.decoder.parameters()).dtype
        return torch.cat([to_uint8(self.decoder(rearrange(feats[i:i + self._chunk()], "b h w d -> b d h w").to(dtype)))
                          for i in range(0, max(len(feats), 1), self._chunk())])

    @torch.no_grad()
    def retokenize(self, tokens) -> torch.Tensor:
        """int64 [b, h', w'] -> int64 [b, h', w']: the tokens of the frame these tokens decode to (a
        round trip, decode then encode). A world model's generated token map need not be one the
        encoder makes from any frame; its round trip is (README "World model", *Retokenized rollouts*)."""
        return self.encode(self.decode(tokens))

    def _chunk(self) -> int:
        """Frames per encoder/decoder pass at inference: on a CPU a few dozen frames at a time keep
        the activations in cache (a 512-frame decode at 64x128 ran at 7.4 ms/frame, 16 at a time
        at 3.6 ms); an accelerator takes the whole batch."""
        return self.CPU_CHUNK if self.device.type == "cpu" else 1 << 30

    def compute_loss(self, batch: torch.Tensor, outputs: dict | None = None) -> tuple[torch.Tensor, dict]:
        """The trainable contract (drivegpt.trainable): reconstruction (L1 + MSE + SSIM + gradient,
        weights ``tokenizer.loss.*``) + commitment, on float frames [b, 3, h, w] in [-1, 1].
        ``outputs`` receives ``recon`` and ``indices`` (the adversarial term and code usage)."""
        recon, indices, q_loss = self(batch)
        parts = self.rec_loss(recon, batch)
        loss = parts["rec"] + q_loss
        parts.update(commit=q_loss, loss=loss)
        if outputs is not None:
            outputs.update(recon=recon, indices=indices)
        return loss, parts

    @torch.no_grad()
    def reconstruct(self, frames) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames -> (tokens int64, reconstructed uint8 frames)."""
        tokens = self.encode(frames)
        return tokens, self.decode(tokens)


# -- checkpoints ------------------------------------------------------------------------------
def tokenizer_config(cfg) -> dict:
    """Plain-dict copy of the ``tokenizer`` config group (resolved), as stored in checkpoints."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def save_tokenizer(model: Tokenizer, path: str | Path, extra: dict | None = None) -> Path:
    """Write a standalone checkpoint {kind, config, state_dict, ...} atomically (drivegpt.checkpoints)."""
    return save_artifact(path, CHECKPOINT_KIND, tokenizer_config(model.cfg), model.state_dict(), **(extra or {}))


def read_checkpoint(path: str | Path) -> tuple[dict, dict, Path]:
    """(config dict, state_dict of the Tokenizer, resolved path) from tokenizer.pt or a Lightning .ckpt,
    loaded safely; another kind of checkpoint or a non-checkpoint raises naming the file."""
    art = read_artifact(path, CHECKPOINT_KIND)
    return art.config, art.state_dict, art.path


def check_compatible(stored: Mapping, expected: Mapping, where: str) -> None:
    """Raise naming every shape-relevant key where ``stored`` (a checkpoint) differs from ``expected``."""
    def get(cfg, k):
        return cfg.get(k, SHAPE_DEFAULTS.get(k))

    diffs = [f"{k}: checkpoint has {get(stored, k)!r}, config wants {get(expected, k)!r}"
             for k in SHAPE_KEYS if k in expected and _norm(get(stored, k)) != _norm(get(expected, k))]
    if diffs:
        raise TokenizerInputError(f"{where}: checkpoint does not match the config ({'; '.join(diffs)})")


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) or OmegaConf.is_list(v) else v


def load_tokenizer(path: str | Path, expect: Mapping | DictConfig | None = None,
                   map_location: str | torch.device = "cpu") -> Tokenizer:
    """Load a tokenizer (eval mode). ``expect``: a tokenizer config the checkpoint must match
    (frame size, downsample, codebook, ...); a mismatch raises naming the keys."""
    cfg, sd, p = read_checkpoint(path)
    if expect is not None:
        check_compatible(cfg, tokenizer_config(expect), str(p))
    model = Tokenizer(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not fit the stored config (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    model.path = str(p.resolve())
    return model.to(map_location).eval()
