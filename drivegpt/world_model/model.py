"""The DriveGPT world model: a pose-conditioned decoder-only transformer over frame tokens.

Sequence layout (F frames, each an h x w grid of tokenizer codes, n = h*w):

    [S_0, x_0[0], ..., x_0[n-1],  S_1, x_1[0], ..., x_1[n-1],  ...,  S_{F-1}, x_{F-1}[...]]

``S_k`` is a *frame-start* token: a learned embedding plus the conditioning of frame k, i.e.
``MLP(rel_pose[k-1], speed[k-1])``, the move from frame k-1 to frame k and the speed at k-1
(frame 0 has no move and gets the learned null embedding). The same move embedding is added to
every image token of frame k (global conditioning of each position, as action-conditioned video
models do), so every prediction in the frame reads the move directly instead of having to find
it through attention to ``S_k``; a tiny model learns to follow the pose far faster this way.
Image tokens are raster order.

Previous frame (``prev_frame`` = k, ``prev_warp``): every image position of frame k also gets
the previous frame's k x k token neighbourhood around the token it predicts (embeddings through
a conv), after warping that embedding map by an affine transform linear in the move into frame
k (a spatial transformer, identity at initialisation: ego-motion shifts, zooms and rotates the
whole picture). This is the copy-and-move prior of video: without it a small model trained for
a few hundred steps on CPU hardly used the previous frame at all (demo: 3.81 bits/token with
four frames of context vs 3.88 with none) and not the pose; with it 2.88 at 150 steps, and the
mirrored move costs 0.085 bits/token (``tests/test_world_model_logged.py``).
Every position gets a learned spatial embedding (slot 0 = the start token, slot 1+i = image
token i) plus a learned temporal embedding (frame index).

Attention is plain causal (every token sees all earlier tokens, including earlier tokens of
its own frame). With plain causal attention a KV-cached decode is exactly the full forward, and
the start token ``S_k`` sees frames < k and the commanded move into frame k but none of frame
k's pixels.

Heads:
- next token: the hidden state at ``S_k`` predicts ``x_k[0]``; at ``x_k[i]`` predicts
  ``x_k[i+1]`` (the last image token of a frame predicts nothing: the next start is given).
  The output projection is tied to the token embedding.
- disengagement, on every start token ``S_k``: logits [n_horizons, 3 causes] for "the
  (engaged) autopilot is disengaged by cause c within horizon h after arriving at frame k",
  i.e. the window's label ``disengage[k]``. ``S_k`` has seen the history and the commanded
  move into frame k but not frame k itself, so in the learned simulator the head answers "how
  risky is the state the commanded move leads to" (the hazard after the move). Frame 0 (no
  move) is excluded from the loss.
- next pose (behaviour prior, optional): on the last image token of frame k, the logged move
  ``rel_pose[k]`` (normalised, Huber loss), which that position has not seen.

Parallel decoding (``decoding="maskgit"``, MaskGIT as Genie uses it over VQ tokens): attention
is block-causal instead: every position sees all earlier frames; within its own frame the start
token ``S_k`` sees only itself and each image token sees ``S_k`` and every image token of the
frame. A fraction of each frame's image tokens (cosine schedule, per frame) is replaced by a
learned mask embedding and the position of a masked token predicts that token (not the next
one). Sampling fills a whole frame in ``mask_steps`` passes (``sampling``), not one pass per
token. Conditioning dropout then drops frames' moves independently, so guidance can drop the
commanded move alone and share the context's pass.

Conditioning dropout: during training a fraction ``cond_drop`` of samples has every move
replaced by the learned null embedding, which makes classifier-free guidance on the pose
possible at sampling time (``sampling.step(..., cfg_scale=s)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from drivegpt.settings import typed
from drivegpt.world_model.losses import LN2, balanced_bce, unpack_batch


DECODINGS = ("ar", "maskgit")


@dataclass
class WorldModelConfig:
    vocab_size: int = 1024
    grid: tuple[int, int] = (8, 16)  # tokens per frame (h', w')
    max_frames: int = 10  # frames per training window = context_frames + 1
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.0
    bias: bool = False
    cond_drop: float = 0.1  # fraction of samples trained without pose conditioning (CFG)
    horizons: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # seconds
    n_causes: int = 3  # STEER, BRAKE, GAS
    pose_head: bool = True
    # the disengagement head also reads the normalised conditioning of its frame (the move into
    # it and the speed) directly, through a small MLP, besides the start token's hidden state
    dis_cond: bool = False
    # ... and, with dis_cond, the conditioning of the ``dis_history`` frames before it too (zeros
    # before the window's first frame): the recent motion (speed changes, yaw rates) says how
    # hard the car brakes and turns, which the safety driver's comfort rules read
    dis_history: int = 0
    # the disengagement head reads the start token's hidden state (False: with dis_cond, the recent
    # moves alone; the hazard then depends on the commanded and past moves only, not the frames)
    dis_start: bool = True
    # every position also reads the previous frame around the token it predicts (a k x k
    # neighbourhood of its token embeddings, through a conv): the copy-and-shift prior of video
    # (0 = off, the original model)
    prev_frame: int = 0
    # before the conv, the previous frame's embedding map is warped by an affine transform that
    # is linear in the move into the frame (identity at start; a spatial transformer): ego-motion
    # moves the whole picture (yaw -> shift, forward -> zoom), which a conv alone learns slowly
    prev_warp: bool = False
    # a learned per-position flow, linear in the move (7 x h' x w' x 2, zero at start), added to the
    # affine warp's sampling grid: the road plane's flow under a real move is not affine (near rows
    # move more than far ones), which the sharper pose-following net showed the affine warp misses
    prev_flow: bool = False
    fps: float = 5.0  # frame rate the model reads (fleet fps / stride)
    # "ar": one token per pass, raster order; "maskgit": a whole frame in ``mask_steps`` passes
    # (block-causal attention, masked-token training; see the module docstring)
    decoding: str = "ar"
    mask_steps: int = 8  # maskgit: sampling passes per frame (sampling.generate_frame's default)
    # training only: each context frame (all but a window's last) has a fraction r ~ U(0, context_noise)
    # of its tokens replaced by random ones in the input (the targets stay clean): a rollout reads its own
    # imperfect frames, which teacher forcing never shows (GameNGen's noise augmentation, on tokens)
    context_noise: float = 0.0

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        self.horizons = tuple(float(h) for h in self.horizons)
        if self.prev_frame < 0 or (self.prev_frame and self.prev_frame % 2 == 0):
            raise ValueError(f"prev_frame={self.prev_frame}: 0 (off) or an odd kernel size")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding={self.decoding!r}: one of {', '.join(DECODINGS)}")
        if self.mask_steps < 1:
            raise ValueError(f"mask_steps={self.mask_steps}: at least one sampling pass per frame")
        if not (self.dis_start or self.dis_cond):
            raise ValueError("dis_start=False needs dis_cond=True: the disengagement head must read something")
        if self.dis_history < 0:
            raise ValueError(f"dis_history={self.dis_history}: the number of earlier frames' moves the hazard "
                             "head reads (>= 0)")
        if self.max_frames < 2:
            raise ValueError(f"max_frames={self.max_frames}: need at least one context frame + one to predict")
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"context_noise={self.context_noise}: the largest fraction of a context frame's tokens "
                             "replaced in training, in [0, 1)")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def context_frames(self) -> int:
        return self.max_frames - 1

    @property
    def block_size(self) -> int:
        return self.max_frames * (self.tokens_per_frame + 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["horizons"] = list(self.horizons)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WorldModelConfig":
        """From a config/checkpoint mapping; an unknown key raises naming it."""
        return typed(cls, d, "world_model")


class KVCache:
    """Preallocated keys/values per layer: [b, n_head, max_len, head_dim]; ``length`` filled."""

    def __init__(self, cfg: WorldModelConfig, batch: int, max_len: int, device, dtype):
        hd = cfg.n_embd // cfg.n_head
        shape = (batch, cfg.n_head, max_len, hd)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0
        self.max_len = max_len

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        t0, t1 = self.length, self.length + k.shape[2]
        if t1 > self.max_len:
            raise ValueError(f"KV cache overflow: {t1} > {self.max_len} positions")
        self.k[layer][:, :, t0:t1] = k
        self.v[layer][:, :, t0:t1] = v
        return self.k[layer][:, :, :t1], self.v[layer][:, :, :t1]


@dataclass(frozen=True)
class FrameBlocks:
    """maskgit's block-causal frame mask (``WorldModel.frame_mask``) as blocks: queries are the
    slots of frames past_frames..past_frames+n_frames-1 (``slots`` = 1 start token + the image
    tokens), keys every slot of frames 0.. . Attention then runs frame by frame on the keys each
    query may see, with no mask tensor: a frame's start token on the earlier frames and itself,
    its image tokens on everything up to the end of their frame. The same result as the dense
    mask, from ~60% of its attention FLOPs over five frames; the CPU flash kernel also runs ~25%
    faster per FLOP without a mask (README "World model", *Frame by frame*)."""

    n_frames: int
    slots: int
    past_frames: int = 0

    def dense(self, device=None) -> torch.Tensor:
        """The [q, k] bool mask these blocks stand for (True = may attend)."""
        fk = torch.arange(self.past_frames + self.n_frames, device=device).repeat_interleave(self.slots)
        sk = torch.arange(self.slots, device=device).repeat(self.past_frames + self.n_frames)
        fq, sq = fk[self.past_frames * self.slots:, None], sk[self.past_frames * self.slots:, None]
        return (fk[None] < fq) | ((fk[None] == fq) & ((sq > 0) | (sk[None] == 0)))

    def attention(self, q, k, v, dropout_p: float = 0.0) -> torch.Tensor:
        """SDPA of q [b, nh, n_frames * slots, hd] against k, v [b, nh, (past_frames + n_frames) *
        slots, hd] under the frame mask."""
        if q.shape[2] != self.n_frames * self.slots or k.shape[2] != (self.past_frames + self.n_frames) * self.slots:
            raise ValueError(f"FrameBlocks({self.n_frames}, {self.slots}, {self.past_frames}): got {q.shape[2]} "
                             f"queries and {k.shape[2]} keys")
        out = []
        for j in range(self.n_frames):
            q0, k0 = j * self.slots, (self.past_frames + j) * self.slots
            out.append(F.scaled_dot_product_attention(q[:, :, q0:q0 + 1], k[:, :, :k0 + 1], v[:, :, :k0 + 1],
                                                      dropout_p=dropout_p))
            if self.slots > 1:
                end = k0 + self.slots
                out.append(F.scaled_dot_product_attention(q[:, :, q0 + 1:q0 + self.slots], k[:, :, :end],
                                                          v[:, :, :end], dropout_p=dropout_p))
        return torch.cat(out, dim=2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask`` [t, past + t] bool (True = may attend) or ``FrameBlocks`` replaces the causal mask."""
        t = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b t (three nh hd) -> three b nh t hd", three=3, nh=self.n_head)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
        drop = self.dropout if self.training else 0.0
        if isinstance(attn_mask, FrameBlocks):
            y = attn_mask.attention(q, k, v, dropout_p=drop)
        elif attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        elif t == 1:  # one new token attends to everything cached
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:  # a chunk appended to a non-empty cache: causal with an offset
            qi = torch.arange(past, past + t, device=x.device)[:, None]
            ki = torch.arange(past + t, device=x.device)[None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=ki <= qi, dropout_p=drop)
        return self.proj(rearrange(y, "b nh t hd -> b t (nh hd)"))


class Block(nn.Module):
    """Pre-norm transformer block (nanoGPT)."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache=None, layer=0, attn_mask=None):
        x = x + self.drop(self.attn(self.ln1(x), cache, layer, attn_mask))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


class WorldModel(nn.Module):
    def __init__(self, cfg: WorldModelConfig, tokenizer_path: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer_path = tokenizer_path
        d, n = cfg.n_embd, cfg.tokens_per_frame
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.start_emb = nn.Parameter(torch.zeros(d))
        self.null_cond = nn.Parameter(torch.zeros(d))  # "no move": frame 0 and dropped conditioning
        self.spatial_emb = nn.Parameter(torch.zeros(n + 1, d))  # slot 0 = start token
        self.temporal_emb = nn.Parameter(torch.zeros(cfg.max_frames, d))
        self.cond_mlp = nn.Sequential(nn.Linear(7, d), nn.GELU(), nn.Linear(d, d))
        if cfg.prev_frame:
            self.prev_emb = nn.Embedding(cfg.vocab_size, d)
            self.prev_conv = nn.Conv2d(d, d, cfg.prev_frame, padding=cfg.prev_frame // 2)
            if cfg.prev_warp:
                self.prev_theta = nn.Linear(7, 6)  # normalised move + speed -> affine offset from identity
            if cfg.prev_flow:
                if not cfg.prev_warp:
                    raise ValueError("world_model.prev_flow needs world_model.prev_warp (it refines the warp's grid)")
                self.prev_flow_basis = nn.Parameter(torch.zeros(7, *cfg.grid, 2))  # zero: the affine warp at start
            self.prev_null = nn.Parameter(torch.zeros(d))  # frame 0 of a window: no previous frame
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=cfg.bias)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied
        self.mask_emb = nn.Parameter(torch.zeros(d)) if cfg.decoding == "maskgit" else None
        n_dis = len(cfg.horizons) * cfg.n_causes
        if cfg.dis_cond:
            n_in = (d if cfg.dis_start else 0) + 7 * (1 + cfg.dis_history)
            self.dis_head = nn.Sequential(nn.Linear(n_in, d), nn.GELU(), nn.Linear(d, n_dis))
        else:
            self.dis_head = nn.Linear(d, n_dis)
        self.pose_head = nn.Linear(d, 6) if cfg.pose_head else None
        # log-odds of the training positive rate per (horizon, cause): the head is trained
        # class-balanced (its raw output is the log-odds at a 50% prior), so it is added back to
        # give calibrated probabilities (logit adjustment); set by the training module
        self.register_buffer("dis_prior", torch.zeros(len(cfg.horizons), cfg.n_causes))
        # conditioning normaliser (rel_pose 6 + speed 1), fitted on the first training batch
        self.register_buffer("cond_mean", torch.zeros(7))
        self.register_buffer("cond_std", torch.ones(7))
        self.register_buffer("cond_fitted", torch.zeros((), dtype=torch.bool))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections (GPT-2 scaled init)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for p in (self.start_emb, self.null_cond, self.spatial_emb, self.temporal_emb, self.mask_emb):
            if p is not None:
                nn.init.normal_(p, mean=0.0, std=0.02)
        if cfg.prev_frame:
            nn.init.normal_(self.prev_null, mean=0.0, std=0.02)
            if cfg.prev_warp:
                nn.init.zeros_(self.prev_theta.weight)
                nn.init.zeros_(self.prev_theta.bias)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=0.02 / m.kernel_size[0])
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def fit_conditioning(self, rel_pose: torch.Tensor, speed: torch.Tensor) -> None:
        """Set the pose/speed normaliser from data (rel_pose [..., 6], speed [...])."""
        c = torch.cat([rel_pose.reshape(-1, 6), speed.reshape(-1, 1)], dim=1).double()
        self.cond_mean.copy_(c.mean(0).to(self.cond_mean))
        self.cond_std.copy_(c.std(0).clamp_min(1e-3).to(self.cond_std))
        self.cond_fitted.fill_(True)

    def normalize_pose(self, rel_pose: torch.Tensor) -> torch.Tensor:
        return (rel_pose - self.cond_mean[:6]) / self.cond_std[:6]

    def cond_features(self, rel_pose: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
        """rel_pose [..., 6], speed [...] -> the normalised, clamped conditioning vector [..., 7]."""
        c = torch.cat([rel_pose, speed[..., None]], dim=-1).to(self.cond_mean.dtype)
        # clamp: a dimension nearly constant in the fitting batch must not blow up later inputs
        return ((c - self.cond_mean) / self.cond_std).clamp(-10, 10).to(self.start_emb.dtype)

    def frame_features(self, rel_pose, speed, n_frames: int) -> torch.Tensor:
        """Conditioning vectors [b, n_frames, 7] of frames 0..n_frames-1 (frame 0: zeros)."""
        c = self.cond_features(rel_pose[:, : n_frames - 1], speed[:, : n_frames - 1])
        return torch.cat([torch.zeros_like(c[:, :1]).expand(c.shape[0], 1, 7), c], dim=1)

    def hazard_features(self, rel_pose, speed, n_frames: int) -> torch.Tensor:
        """What the disengagement head reads besides the start token: the conditioning vectors of
        frame k and of the ``cfg.dis_history`` frames before it (zeros before frame 0), newest
        first -> [b, n_frames, 7 (1 + dis_history)]."""
        f = self.frame_features(rel_pose, speed, n_frames)
        if not self.cfg.dis_history:
            return f
        pad = F.pad(f, (0, 0, self.cfg.dis_history, 0))
        return torch.cat([pad[:, self.cfg.dis_history - j: self.cfg.dis_history - j + n_frames]
                          for j in range(self.cfg.dis_history + 1)], dim=-1)

    @staticmethod
    def frame_drop(drop: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """Condition dropout per frame [b, n_frames] from ``drop`` [b] (whole samples) or
        [b, >= n_frames] (frames: True = frame k's move is replaced by the null move)."""
        if drop is None:
            return None
        if drop.ndim == 1:
            return drop[:, None].expand(drop.shape[0], n_frames)
        if drop.shape[1] < n_frames:
            raise ValueError(f"drop: {drop.shape[1]} frames < the {n_frames} embedded")
        return drop[:, :n_frames]

    def move_features(self, rel_pose, speed, n_frames: int, drop=None) -> torch.Tensor:
        """``frame_features`` with the dropped frames' (``frame_drop(drop)``) set to zeros (the mean move)."""
        f = self.frame_features(rel_pose, speed, n_frames)
        d = self.frame_drop(drop, n_frames)
        return f if d is None else torch.where(d[..., None], torch.zeros_like(f), f)

    def cond_embed(self, rel_pose: torch.Tensor, speed: torch.Tensor, drop: torch.Tensor | None = None):
        """rel_pose [b,k,6], speed [b,k] -> embeddings [b,k,d] of the moves (null where drop [b] or
        [b,k] is true)."""
        e = self.cond_mlp(self.cond_features(rel_pose, speed))
        if drop is not None:
            d = drop[:, None] if drop.ndim == 1 else drop
            e = torch.where(d[..., None], self.null_cond.expand_as(e), e)
        return e

    def frame_conditioning(self, rel_pose, speed, n_frames: int, drop=None) -> torch.Tensor:
        """Move embeddings [b, n_frames, d] of frames 0..n_frames-1: frame k >= 1 is conditioned
        on rel_pose[:, k-1], speed[:, k-1]; frame 0 on the null move."""
        b = rel_pose.shape[0]
        null = repeat(self.null_cond, "d -> b 1 d", b=b)
        d = self.frame_drop(drop, n_frames)
        moves = self.cond_embed(rel_pose[:, : n_frames - 1], speed[:, : n_frames - 1], None if d is None else d[:, 1:])
        return torch.cat([null, moves], dim=1)

    def start_tokens(self, rel_pose, speed, n_frames: int, drop=None) -> torch.Tensor:
        """Start-token embeddings [b, n_frames, d] for frames 0..n_frames-1 (no positions)."""
        return self.start_emb + self.frame_conditioning(rel_pose, speed, n_frames, drop)

    # ------------------------------------------------------------------ previous frame
    def prev_features(self, prev: torch.Tensor | None, batch: int, feats: torch.Tensor | None = None) -> torch.Tensor:
        """The previous-frame input of one frame's slots: prev tokens [b, h, w] (None = no previous
        frame) -> [b, n+1, d]. Slot j (1+i = image token i) predicts image token j, so it gets the
        previous frame's neighbourhood of token j; slot n predicts nothing and the start token
        (slot 0, the disengagement head's query) is left as it was: both get zeros (measured: the
        tiny e2e model's held-out STEER AUROC fell from 0.93 to 0.75 with a corner neighbourhood
        added to its start token). Zeros throughout when ``cfg.prev_frame`` is 0. With
        ``cfg.prev_warp`` the map is first warped by the affine transform of ``feats`` [b, 7] (the
        frame's ``move_features``; zeros = the mean move, used where the conditioning is dropped)."""
        d, n = self.cfg.n_embd, self.cfg.tokens_per_frame
        dev, dt = self.start_emb.device, self.start_emb.dtype
        if not self.cfg.prev_frame:
            return torch.zeros(batch, n + 1, d, device=dev, dtype=dt)
        if prev is None:
            a = self.prev_null.expand(batch, n, d)
        else:
            e = rearrange(self.prev_emb(prev), "b h w d -> b d h w")
            if self.cfg.prev_warp:
                if feats is None:
                    raise ValueError("prev_warp: the previous-frame input needs the frame's move (feats)")
                eye = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], device=e.device, dtype=e.dtype)
                theta = (eye + self.prev_theta(feats.to(e.dtype))).view(-1, 2, 3)
                grid = F.affine_grid(theta, list(e.shape), align_corners=False)
                if self.cfg.prev_flow:  # + the per-position flow of this move (grid units, [-1, 1] = the frame)
                    grid = grid + torch.einsum("bk,khwc->bhwc", feats.to(e.dtype), self.prev_flow_basis.to(e.dtype))
                e = F.grid_sample(e, grid, mode="bilinear", padding_mode="border", align_corners=False)
            a = rearrange(self.prev_conv(e), "b d h w -> b (h w) d")
        zero = torch.zeros(batch, 1, d, device=dev, dtype=a.dtype)
        return torch.cat([zero, a[:, 1:], zero], dim=1)

    def sequence_prev(self, tokens: torch.Tensor, n_frames: int, feats: torch.Tensor) -> torch.Tensor:
        """Previous-frame inputs [b, n_frames, n+1, d] of frames 0..n_frames-1 of a window whose
        frames are ``tokens`` [b, >= n_frames-1, h, w] (frame 0: the null previous frame); ``feats``
        [b, n_frames, 7] the frames' move features (``move_features``)."""
        b = tokens.shape[0]
        first = self.prev_features(None, b)[:, None]
        if n_frames == 1:
            return first
        if not self.cfg.prev_frame:
            return first.expand(b, n_frames, *first.shape[2:])
        rest = self.prev_features(rearrange(tokens[:, : n_frames - 1], "b f h w -> (b f) h w"), b * (n_frames - 1),
                                  rearrange(feats[:, 1:n_frames], "b f c -> (b f) c"))
        return torch.cat([first, rearrange(rest, "(b f) s d -> b f s d", b=b)], dim=1)

    # ------------------------------------------------------------------ sequence
    def token_embed(self, tokens: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [..., d] of ``tokens`` [...], the mask embedding where ``masked`` [...] is true."""
        e = self.tok_emb(tokens)
        if masked is None:
            return e
        if self.mask_emb is None:
            raise ValueError("masked tokens: only a decoding='maskgit' world model has a mask embedding")
        return torch.where(masked[..., None], self.mask_emb.to(e.dtype), e)

    def embed_sequence(self, tokens, rel_pose, speed, drop=None, open_frame: bool = False, masked=None):
        """Embed full frames (and optionally the start token of one more frame).

        tokens [b, F, h, w] int64; rel_pose [b, >=F-1 (+1 if open_frame), 6]; speed likewise;
        ``masked`` [b, F, n] bool (maskgit): those image tokens get the mask embedding.
        Returns x [b, F*(n+1) (+1), d] with position embeddings added.
        """
        b, f = tokens.shape[:2]
        n_start = f + int(open_frame)
        if n_start > self.cfg.max_frames:
            raise ValueError(f"{n_start} frames > max_frames={self.cfg.max_frames}")
        cond = self.frame_conditioning(rel_pose, speed, n_start, drop)  # b F' d
        prev = self.sequence_prev(tokens, n_start, self.move_features(rel_pose, speed, n_start, drop))
        starts = self.start_emb + cond
        img = self.token_embed(rearrange(tokens, "b f h w -> b f (h w)"), masked) + cond[:, :f, None]  # b F n d
        frames = torch.cat([starts[:, :f, None], img], dim=2) + self.spatial_emb + prev[:, :f]  # b F n+1 d
        frames = frames + self.temporal_emb[:f, None]
        x = rearrange(frames, "b f n d -> b (f n) d")
        if open_frame:
            s = starts[:, f] + self.spatial_emb[0] + self.temporal_emb[f] + prev[:, f, 0]
            x = torch.cat([x, s[:, None]], dim=1)
        return x

    def embed_frame(self, tokens: torch.Tensor, masked: torch.Tensor | None, frame: int, cond: torch.Tensor,
                    prev: torch.Tensor) -> torch.Tensor:
        """One frame's slots [b, n+1, d] (start token, image tokens) at window index ``frame``, as
        ``embed_sequence`` embeds them: tokens [b, n] (the mask embedding where ``masked`` [b, n]),
        the frame's move embedding ``cond`` [b, d] and previous-frame input ``prev`` [b, n+1, d]."""
        start = (self.start_emb + cond)[:, None]
        img = self.token_embed(tokens, masked) + cond[:, None]
        return torch.cat([start, img], dim=1) + self.spatial_emb + prev + self.temporal_emb[frame]

    def embed_token(self, token: torch.Tensor, frame: int, index: int, cond: torch.Tensor | None = None,
                    prev: torch.Tensor | None = None) -> torch.Tensor:
        """token [b] -> [b, 1, d]: image token ``index`` of frame ``frame``, with positions, the
        frame's move embedding ``cond`` [b, d] (``frame_conditioning(...)[:, frame]``) and its
        previous-frame input ``prev`` [b, n+1, d] (``prev_features``; needed with ``cfg.prev_frame``)."""
        x = self.tok_emb(token) + self.spatial_emb[1 + index] + self.temporal_emb[frame]
        if cond is not None:
            x = x + cond
        if self.cfg.prev_frame:
            if prev is None:
                raise ValueError("this model reads the previous frame: pass prev=model.prev_features(...)")
            x = x + prev[:, 1 + index]
        return x[:, None]

    def hidden(self, x: torch.Tensor, cache: KVCache | None = None,
               attn_mask: torch.Tensor | FrameBlocks | None = None) -> torch.Tensor:
        """Run the transformer on embeddings x [b, t, d] (appending to ``cache``) -> ln_f(h).
        ``attn_mask`` [t, past + t] bool replaces the causal mask (maskgit: ``frame_mask``, or
        ``frame_blocks``, the same pattern without a mask tensor)."""
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, attn_mask)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def disengage_logits(self, h_start: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """h_start [..., d] (and with ``cfg.dis_cond`` the frame's recent conditioning [..., 7 (1 +
        dis_history)], ``hazard_features``) -> calibrated logits [..., n_horizons, n_causes] (raw +
        dis_prior)."""
        raw = self.dis_head(self.hazard_input(h_start, feats))
        raw = rearrange(raw, "... (nh c) -> ... nh c", c=self.cfg.n_causes)
        return raw + self.dis_prior.to(raw.dtype)

    def hazard_input(self, h_start: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """What ``dis_head`` reads: the start token's state and/or the recent moves (``cfg.dis_start``,
        ``cfg.dis_cond``)."""
        if not self.cfg.dis_cond:
            return h_start
        if feats is None:
            raise ValueError("this model's disengagement head reads the frame's conditioning: pass feats")
        feats = feats.to(h_start.dtype)
        return torch.cat([h_start, feats], dim=-1) if self.cfg.dis_start else feats

    def frame_mask(self, n_frames: int, past_frames: int = 0, device=None) -> torch.Tensor:
        """maskgit's block-causal attention mask [q, k] bool (True = may attend): queries are the
        slots of frames past_frames..past_frames+n_frames-1, keys those of frames 0..; a slot sees
        every earlier frame; in its own frame the start token sees itself, image tokens see all."""
        return self.frame_blocks(n_frames, past_frames).dense(device)

    def frame_blocks(self, n_frames: int, past_frames: int = 0) -> FrameBlocks:
        """``frame_mask``'s pattern as blocks: pass it as ``attn_mask`` to attend frame by frame
        without a mask tensor (the same result, fewer FLOPs)."""
        return FrameBlocks(n_frames, self.cfg.tokens_per_frame + 1, past_frames)

    def random_masks(self, b: int, n_frames: int, generator=None) -> torch.Tensor:
        """maskgit training masks [b, n_frames, n] bool: per frame a ratio r = cos(pi/2 u), u ~ U(0, 1)
        (MaskGIT's schedule), of its image tokens (at least one) masked, chosen uniformly."""
        n, dev = self.cfg.tokens_per_frame, self.start_emb.device
        u = torch.rand(b, n_frames, 1, device=dev, generator=generator)
        count = torch.ceil(torch.cos(0.5 * math.pi * u) * n).clamp(1, n)
        ranks = torch.rand(b, n_frames, n, device=dev, generator=generator).argsort(-1).argsort(-1)
        return ranks < count

    def corrupt_context(self, tokens: torch.Tensor, generator=None) -> torch.Tensor:
        """``tokens`` [b, K, h, w] with, in every frame but the last, a fraction r ~ U(0, cfg.context_noise)
        (per sample and frame) of the tokens replaced by uniformly random ones (``cfg.context_noise``)."""
        b, k = tokens.shape[:2]
        if self.cfg.context_noise <= 0 or k < 2:
            return tokens
        dev = tokens.device
        r = torch.rand(b, k, 1, 1, device=dev, generator=generator) * self.cfg.context_noise
        hit = torch.rand(tokens.shape, device=dev, generator=generator) < r
        hit[:, -1] = False
        noise = torch.randint(0, self.cfg.vocab_size, tokens.shape, device=dev, generator=generator)
        return torch.where(hit, noise.to(tokens.dtype), tokens)

    def forward(self, tokens, rel_pose, speed, drop=None, masked=None) -> dict[str, torch.Tensor]:
        """Teacher-forced pass over windows.

        tokens [b, K, h, w] int64, rel_pose [b, K, 6], speed [b, K], drop [b] or [b, K] bool or
        None. Returns logits [b, K, n, V], disengage [b, K, n_h, 3] (from S_k), pose [b, K, 6]
        (normalised next move, from the frame's last image token), start [b, K, d] (the start
        tokens' hidden states). "ar": the position of x_k[i] predicts x_k[i] from x_k[<i].
        "maskgit": ``masked`` [b, K, n] bool (default: the last frame's tokens all masked) are
        replaced by the mask embedding and each position predicts its own token; ``out["masked"]``
        says which logits are predictions.
        """
        k = tokens.shape[1]
        if self.cfg.decoding == "maskgit":
            if masked is None:
                masked = torch.zeros(tokens.shape[0], k, self.cfg.tokens_per_frame, dtype=torch.bool,
                                     device=tokens.device)
                masked[:, -1] = True
            x = self.embed_sequence(tokens, rel_pose, speed, drop, masked=masked)
            h = self.hidden(x, attn_mask=self.frame_mask(k, device=x.device))
        elif masked is not None:
            raise ValueError("masked tokens: this world model decodes autoregressively (decoding='ar')")
        else:
            h = self.hidden(self.embed_sequence(tokens, rel_pose, speed, drop))
        h = rearrange(h, "b (f n) d -> b f n d", f=k)
        out = {
            "logits": self.lm_head(h[:, :, 1:] if masked is not None else h[:, :, :-1]),
            "disengage": self.disengage_logits(h[:, :, 0], self.hazard_features(rel_pose, speed, k)),
            "start": h[:, :, 0],  # the start tokens' hidden states (what the disengagement head reads)
        }
        if self.pose_head is not None:
            out["pose"] = self.pose_head(h[:, :, -1])
        if masked is not None:
            out["masked"] = masked
        return out

    def compute_loss(self, batch: dict, *, dis_weight: float = 1.0, pose_weight: float = 0.1,
                     pos_rate: torch.Tensor | None = None, drop: torch.Tensor | None = None,
                     outputs: dict | None = None, masked: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The trainable contract (drivegpt.trainable): (loss, named parts incl. "loss").

        ``batch``: a window batch (``losses.unpack_batch`` reads it). Token cross-entropy, plus
        ``dis_weight`` x class-balanced disengagement BCE (rates ``pos_rate`` [n_h, 3], 0.5 when
        None) when the batch has targets, plus ``pose_weight`` x the pose prior. ``drop`` [b] or
        [b, K]: condition dropout. ``outputs`` (a dict) receives the forward outputs,
        ``target_tokens`` and, with targets, ``mask``/``target``. maskgit: in training mode every
        frame gets ``random_masks`` (``masked`` overrides; in eval mode the last frame is masked
        whole) and the token loss is over the masked tokens alone. In training mode the input's
        context frames are corrupted (``corrupt_context``; off unless ``cfg.context_noise``).
        """
        b = unpack_batch(batch)
        if self.cfg.decoding == "maskgit" and masked is None and self.training:
            masked = self.random_masks(b["tokens"].shape[0], b["tokens"].shape[1])
        tokens = self.corrupt_context(b["tokens"]) if self.training else b["tokens"]  # the targets stay clean
        out = self(tokens, b["rel_pose"], b["speed"], drop, masked)
        logits = out["logits"].float()  # b K n V
        target = b["tokens"].flatten(2)  # b K n
        if "masked" in out:
            ce = F.cross_entropy(logits[out["masked"]], target[out["masked"]])
        else:
            ce = F.cross_entropy(logits.flatten(0, 2), target.flatten())
        loss = ce
        parts = {"loss_tokens": ce, "bits_per_token": ce / LN2}
        if b["target"] is not None and dis_weight > 0:
            if b["target"].shape[2:] != out["disengage"].shape[2:]:
                raise ValueError(f"disengagement targets {tuple(b['target'].shape[2:])} != model heads "
                                 f"{tuple(out['disengage'].shape[2:])} (world_model.horizons vs the data's)")
            mask = b["mask"]
            mask[:, 0] = 0  # frame 0 has no commanded move and no history
            rate = pos_rate if pos_rate is not None else torch.full(out["disengage"].shape[2:], 0.5,
                                                                    device=logits.device)
            # class-balanced loss on the raw head (log-odds at a 50% prior); the model adds the
            # training prior's log-odds back (dis_prior) so its probabilities follow the data's rates
            dis = balanced_bce(out["disengage"] - self.dis_prior, b["target"], mask, rate)
            loss = loss + dis_weight * dis
            parts["loss_disengage"] = dis
            out["mask"], out["target"] = mask, b["target"]
        if "pose" in out and pose_weight > 0:
            pose = F.smooth_l1_loss(out["pose"].float(), self.normalize_pose(b["rel_pose"]).clamp(-10, 10))  # robust
            loss = loss + pose_weight * pose
            parts["loss_pose"] = pose
        parts["loss"] = loss
        out["target_tokens"] = target
        if outputs is not None:
            outputs.update(out)
        return loss, parts

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (6N + attention, PaLM appendix B)."""
        n = sum(p.numel() for p in self.blocks.parameters()) + self.lm_head.weight.numel()
        t = seq_len or self.cfg.block_size
        return 6 * n + 12 * self.cfg.n_layer * self.cfg.n_embd * t
