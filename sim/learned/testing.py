"""Small stand-ins that honour the contracts the learned simulator runs on, for tests (here and
in other packages, e.g. RL tests that need a WorldModel-v0 without trained checkpoints).

- ``FakeWorldModel`` + ``fake_step``: ``sampling.step``'s signature; hazard rises with lateral
  motion and braking, so scripted manoeuvres give different curves.
- ``FakeTokenizer``: ``decode`` paints each token's colour over its patch.
- ``fake_samples``: token samples (dicts, as token shards yield them).
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange, repeat

from drivegpt.sim.learned.contexts import ContextPool, pool_from_samples
from drivegpt.sim.learned.models import Models, VehicleModel
from drivegpt.tokenizer import Tokenizer, save_tokenizer
from drivegpt.world_model import WorldModel, WorldModelConfig, save_world_model


class FakeWorldModel(torch.nn.Module):
    def __init__(self, vocab_size=16, grid=(2, 4), context_frames=3, horizons=(0.5, 1.0, 2.0), seed=0):
        super().__init__()
        self.vocab_size, self.grid, self.context_frames = vocab_size, tuple(grid), context_frames
        self.horizons = list(horizons)
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))
        self.pose = torch.nn.Parameter(torch.randn(7, vocab_size, generator=g))
        self.tokenizer_path = None


def fake_step(model, tokens, rel_pose, speed, temperature=1.0, top_k=None, cfg_scale=1.0,
              generator=None, return_entropy=False):
    """tokens [b,K,h,w], rel_pose [b,K,6], speed [b,K] -> (tokens [b,h,w], probs [b,H,3][, entropy [b]])."""
    last = tokens[:, -1]                                              # [b, h, w]
    cond = torch.cat([rel_pose[:, -1], speed[:, -1:]], -1)            # [b, 7]
    logits = model.emb[last] + (cond @ model.pose)[:, None, None, :]  # [b, h, w, V]
    if top_k is not None:
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp.nan_to_num(0.0)).sum(-1).mean((1, 2))
    if temperature == 0:
        nxt = logits.argmax(-1)
    else:
        p = (logits / temperature).softmax(-1)
        flat = rearrange(p, "b h w v -> (b h w) v")
        nxt = rearrange(torch.multinomial(flat, 1, generator=generator), "(b h w) 1 -> b h w",
                        b=last.shape[0], h=last.shape[1])
    dt = float(model.horizons[0])
    lateral = rel_pose[:, -1, 1].abs() * 5.0                          # STEER
    dv = speed[:, -1] - speed[:, -2]
    braking = (-dv).clamp_min(0) * 2.0                                # BRAKE
    gas = dv.clamp_min(0) * 0.5                                       # GAS
    base = torch.stack([lateral, braking, gas], -1) - 3.0             # [b, 3]
    hz = torch.tensor(model.horizons, device=tokens.device) / dt      # [H]
    probs = torch.sigmoid(base[:, None, :] + hz.log()[None, :, None])  # [b, H, 3] rises with horizon
    return (nxt, probs, entropy) if return_entropy else (nxt, probs)


class FakeTokenizer:
    def __init__(self, vocab_size=16, grid=(2, 4), frame_size=(32, 64), seed=0):
        self.vocab_size, self.grid, self.frame_size = vocab_size, tuple(grid), tuple(frame_size)
        g = torch.Generator().manual_seed(seed)
        self.colors = torch.randint(0, 256, (vocab_size, 3), generator=g, dtype=torch.uint8)

    def decode(self, tokens):
        ph, pw = self.frame_size[0] // self.grid[0], self.frame_size[1] // self.grid[1]
        c = self.colors.to(tokens.device)[tokens]                     # [b, h, w, 3]
        return repeat(c, "b h w c -> b (h ph) (w pw) c", ph=ph, pw=pw)

    def retokenize(self, tokens):
        """A stand-in for the encoder's round trip: odd codes fall on the even code below them."""
        return tokens - tokens % 2


def fake_samples(n_segments=6, T=40, vocab_size=16, grid=(2, 4), seed=0):
    """Token samples like token shards yield: ids seg0000.., smooth straight driving; the even
    segments log a cruise set speed (20 + i m/s), the odd ones none."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_segments):
        speed = (10 + rng.normal(0, 0.5, T).cumsum() * 0.1).astype(np.float32).clip(0)
        rel = np.zeros((T, 6), np.float32)
        rel[:-1, 0] = speed[:-1] / 20.0
        rel[:-1, 5] = rng.normal(0, 0.002, T - 1)
        out.append(dict(tokens=rng.integers(0, vocab_size, (T, *grid)).astype(np.int16),
                        rel_pose=rel, speed=speed, engaged=np.ones(T, bool),
                        disengage=np.zeros(T, np.int8), times=np.arange(T) / 20.0,
                        world_pose=np.zeros((T, 6), np.float32),
                        meta={"segment_id": f"seg{i:04d}", "source": "fake", "fps": 20.0,
                              "camera": {"fx": 32.0, "fy": 32.0, "cx": 32.0, "cy": 16.0,
                                         "width": 64, "height": 32},
                              "vehicle": {}, "tokens": {"vocab_size": vocab_size, "grid": list(grid)},
                              **({"cruise_speed": 20.0 + i} if i % 2 == 0 else {})}))
    return out


def fake_setup(context_frames=3, stride=2, future=0, seed=0, **kw):
    """-> (Models, ContextPool, VehicleModel): fake world model + tokenizer, the real vehicle
    model; every sample counts as held-out."""
    wm = FakeWorldModel(context_frames=context_frames, seed=seed, **kw)
    tok = FakeTokenizer(wm.vocab_size, wm.grid)
    models = Models(wm, tok, fake_step, source="<fake>")
    pool = pool_from_samples(fake_samples(vocab_size=wm.vocab_size, grid=wm.grid, seed=seed),
                             context_frames, stride, lambda sid: "val", future=future)
    return models, pool, VehicleModel()  # the real sim.vehicle


__all__ = ["ContextPool", "FakeTokenizer", "FakeWorldModel", "fake_samples", "fake_setup",
           "fake_step", "tiny_checkpoints"]


def tiny_checkpoints(out_dir, vocab_size=16, frame_size=(32, 64), downsample=16, context_frames=3,
                     fps=10.0, seed=0):
    """Write an untrained tiny real tokenizer + world model (the world model records the
    tokenizer path) -> (world-model checkpoint path, tokenizer path). Sizes of experiment=tiny."""
    from pathlib import Path

    from omegaconf import OmegaConf

    out = Path(out_dir)
    torch.manual_seed(seed)
    tcfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "tokenizer" / "default.yaml")
    tcfg.frame_height, tcfg.frame_width = frame_size
    tcfg.update(dict(downsample=downsample, channels=8, channel_mult=[1, 1], res_blocks=1, embed_dim=8,
                     codebook_size=vocab_size))
    tok = Tokenizer(OmegaConf.to_container(tcfg, resolve=True)).eval()
    tok_path = save_tokenizer(tok, out / "tokenizer.pt")
    wcfg = WorldModelConfig(vocab_size=vocab_size, grid=tok.grid, max_frames=context_frames + 1,
                            n_layer=1, n_head=2, n_embd=32, horizons=(0.5, 1.0, 2.0), fps=fps)
    wm = WorldModel(wcfg, tokenizer_path=str(tok_path)).eval()
    return save_world_model(wm, out / "world_model.pt"), tok_path
