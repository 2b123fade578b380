"""World model: causality, KV-cache == full recomputation, learning, disengagement head, resume."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from drivegpt.config import compose
from drivegpt.training import make_trainer
from drivegpt.world_model import WorldModel, WorldModelConfig, load_world_model, save_world_model
from drivegpt.world_model import sampling
from drivegpt.world_model.metrics import disengage_metrics
from drivegpt.stages.common import bind_fps
from drivegpt.stages.train_world_model import build_module

V, GRID, K = 16, (2, 4), 3


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(dtype=torch.float32, **kw) -> WorldModel:
    torch.manual_seed(0)
    cfg = WorldModelConfig(vocab_size=V, grid=GRID, max_frames=K + 1, n_layer=2, n_head=2, n_embd=32, **kw)
    return WorldModel(cfg).to(dtype).eval()


def window(b=2, k=K, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (b, k, *GRID), generator=g),
            torch.randn(b, k, 6, generator=g).to(dtype), torch.rand(b, k, generator=g).to(dtype) * 10)


# the model with and without the previous-frame path (a 3x3 neighbourhood, warped by the move;
# the last one with a learned per-position flow on the warp's grid)
PREV = [{}, {"prev_frame": 3, "prev_warp": True}, {"prev_frame": 3, "prev_warp": True, "prev_flow": True}]


def with_live_warp(m: WorldModel) -> WorldModel:
    """A fresh model's warp is the identity (zero init): make it depend on the move."""
    if m.cfg.prev_warp:
        with torch.no_grad():
            m.prev_theta.weight.normal_(0.0, 0.1)
    if m.cfg.prev_flow:
        with torch.no_grad():
            m.prev_flow_basis.normal_(0.0, 0.1)
    return m


@pytest.mark.parametrize("prev", PREV)
def test_causality_future_tokens_and_moves_never_change_the_past(prev):
    m = with_live_warp(tiny_model(**prev))
    tok, pose, speed = window()
    base = m(tok, pose, speed)
    j = 5  # change image token x_1[j]
    tok2 = tok.clone()
    tok2[:, 1].view(2, -1)[:, j] = (tok2[:, 1].view(2, -1)[:, j] + 1) % V
    out = m(tok2, pose, speed)
    # logits[:, k, i] predict x_k[i] (from the position before it): those up to x_1[j] are unchanged
    torch.testing.assert_close(out["logits"][:, 0], base["logits"][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out["logits"][:, 1, : j + 1], base["logits"][:, 1, : j + 1], rtol=0, atol=0)
    torch.testing.assert_close(out["disengage"][:, :2], base["disengage"][:, :2], rtol=0, atol=0)
    assert not torch.allclose(out["logits"][:, 1, j + 1:], base["logits"][:, 1, j + 1:])
    assert not torch.allclose(out["disengage"][:, 2], base["disengage"][:, 2])
    # the move into frame 2 (rel_pose[:, 1]) is only visible from S_2 on
    pose2 = pose.clone()
    pose2[:, 1] += 1.0
    out = m(tok, pose2, speed)
    torch.testing.assert_close(out["logits"][:, :2], base["logits"][:, :2], rtol=0, atol=0)
    torch.testing.assert_close(out["disengage"][:, :2], base["disengage"][:, :2], rtol=0, atol=0)
    assert not torch.allclose(out["disengage"][:, 2], base["disengage"][:, 2])


@pytest.mark.parametrize("prev", PREV)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_kv_cache_greedy_equals_full_recomputation(cfg_scale, prev):
    m = with_live_warp(tiny_model(torch.float64, **prev))
    tok, pose, speed = window(b=3, dtype=torch.float64, seed=1)
    cached, dis_c = sampling.generate_frame(m, tok, pose, speed, temperature=0.0, cfg_scale=cfg_scale)
    full, dis_f = sampling.generate_frame_full(m, tok, pose, speed, temperature=0.0, cfg_scale=cfg_scale)
    assert torch.equal(cached, full)
    torch.testing.assert_close(dis_c, dis_f)
    # and the teacher-forced forward on the generated frame agrees with the cache
    if cfg_scale == 1.0:
        ext = m(torch.cat([tok, cached[:, None]], 1), torch.cat([pose, pose[:, :1]], 1),
                torch.cat([speed, speed[:, :1]], 1))
        assert torch.equal(ext["logits"][:, K].argmax(-1).view_as(cached), cached)


def test_previous_frame_path_sees_the_previous_frame_shifted_by_the_move():
    """Slot 1+i of a frame reads the previous frame around token i+1; the warp is the identity at
    initialisation, and a move that maps to a one-column shift moves what every slot reads by
    one column."""
    m = tiny_model(prev_frame=1, prev_warp=True)  # 1x1 conv: a slot reads exactly one token
    g = torch.Generator().manual_seed(0)
    prev = torch.randint(0, V, (1, *GRID), generator=g)
    feats = torch.randn(1, 7, generator=g)
    n, w = GRID[0] * GRID[1], GRID[1]
    got = m.prev_features(prev, 1, feats)
    assert got.shape == (1, n + 1, 32)
    plain = torch.einsum("dc,nc->nd", m.prev_conv.weight[:, :, 0, 0], m.prev_emb(prev.flatten(1))[0]) + m.prev_conv.bias
    torch.testing.assert_close(got[0, 1:n], plain[1:], atol=1e-5, rtol=1e-5)  # identity warp at init
    assert torch.equal(got[0, 0], torch.zeros(32)) and torch.equal(got[0, n], torch.zeros(32))
    with torch.no_grad():  # x_in = x_out + 2/w in normalised coordinates: one column to the right
        m.prev_theta.bias.copy_(torch.tensor([0.0, 0.0, 2.0 / w, 0.0, 0.0, 0.0]))
    shifted = m.prev_features(prev, 1, feats)[0, 1:n].view(-1, 32)
    grid = plain.view(GRID[0], w, 32)
    expect = torch.cat([grid[:, 1:], grid[:, -1:]], dim=1).reshape(n, 32)[1:]  # border padding at the edge
    torch.testing.assert_close(shifted, expect, atol=1e-5, rtol=1e-5)


def test_step_contract_shapes_sampling_and_bad_input():
    m = tiny_model()
    tok, pose, speed = window(b=2, k=5)  # longer than the model's context: cut to the last K
    nxt, p = sampling.step(m, tok, pose, speed, temperature=1.0, top_k=4, generator=torch.Generator().manual_seed(0))
    assert nxt.shape == (2, *GRID) and nxt.dtype == torch.int64 and 0 <= nxt.min() and nxt.max() < V
    assert p.shape == (2, 4, 3) and ((p > 0) & (p < 1)).all()
    greedy_long, _ = sampling.step(m, tok, pose, speed, temperature=0.0)
    greedy_cut, _ = sampling.step(m, tok[:, -K:], pose[:, -K:], speed[:, -K:], temperature=0.0)
    assert torch.equal(greedy_long, greedy_cut)
    # entropy of the new frame's distributions == the teacher-forced forward's on the same tokens
    nxt, _, ent = sampling.step(m, tok[:, -K:], pose[:, -K:], speed[:, -K:], temperature=0.0, return_entropy=True)
    ext = m(torch.cat([tok[:, -K:], nxt[:, None]], 1), torch.cat([pose[:, -K:], pose[:, :1]], 1),
            torch.cat([speed[:, -K:], speed[:, :1]], 1))
    logp = ext["logits"][:, K].log_softmax(-1)
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1).mean(-1), rtol=1e-4, atol=1e-5)
    assert (ent > 0).all() and (ent < np.log(V)).all()
    with pytest.raises(ValueError, match="grid"):
        sampling.step(m, tok[..., :2], pose, speed)
    with pytest.raises(ValueError, match="rel_pose"):
        sampling.step(m, tok, pose[:, :2], speed)


# ---------------------------------------------------------------------------- training helpers
class Windows(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class LossRecorder(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def tiny_cfg(tmp_path, *extra):
    cfg = compose("train_world_model", ["experiment=tiny", f"run_dir={tmp_path}", "data.context_frames=3", *extra])
    bind_fps(cfg)  # no shards here: the road world's rate, as the stage does without data.shards
    return cfg


def fit(cfg, module, items, batch_size, steps, run_dir, ckpt_path=None, val=None):
    assert module.hparams.max_steps >= steps  # the cosine schedule spans the run
    rec = LossRecorder()
    trainer = make_trainer(cfg, run_dir, "world_model", callbacks=[rec], max_steps=steps, log_every_n_steps=1,
                           num_sanity_val_steps=0, limit_val_batches=None)
    dl = DataLoader(Windows(items), batch_size=batch_size, shuffle=False)
    vdl = DataLoader(Windows(val), batch_size=64) if val else None
    trainer.fit(module, dl, vdl, ckpt_path=ckpt_path)
    return rec.losses, trainer


def test_tiny_model_overfits_a_short_token_sequence(tmp_path):
    L.seed_everything(0)
    cfg = tiny_cfg(tmp_path, "world_model.cond_drop=0.0", "world_model.lr=1e-2", "trainer.max_steps=150")
    module = build_module(cfg, V, GRID, None)
    tok, pose, speed = window(b=2, k=K)
    items = [{"tokens": tok[i].to(torch.int16), "rel_pose": pose[i], "speed": speed[i]} for i in range(2)]
    losses, _ = fit(cfg, module, items, 2, 150, tmp_path)
    bits = losses[-1] / np.log(2)
    assert losses[0] > 2.0 and bits < 0.3, (losses[0], losses[-1])  # uniform = 4 bits/token


def planted(n, seed):
    """Windows whose STEER/2 s label is 1 iff the commanded move into the frame has yaw > 0.8.

    Masked entries (censored / not engaged) carry the opposite label: a head that trained on
    them would be pulled the wrong way.
    """
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        pose = torch.randn(K, 6, generator=g)
        tgt = torch.zeros(K, 4, 3)
        risky = torch.zeros(K)
        risky[1:] = (pose[:-1, 5] > 0.8).float()  # label of frame k follows the move k-1 -> k
        tgt[:, 2, 0] = risky
        mask = (torch.rand(K, 4, generator=g) > 0.3).float()
        tgt[:, :, 0] = torch.where(mask > 0, tgt[:, :, 0], 1 - risky[:, None])
        items.append({"tokens": torch.randint(0, V, (K, *GRID), generator=g), "rel_pose": pose,
                      "speed": torch.rand(K, generator=g), "disengage": tgt, "disengage_mask": mask})
    return items


@pytest.mark.parametrize("dis_cond", [False, True])
def test_disengagement_head_learns_a_planted_signal(tmp_path, dis_cond):
    L.seed_everything(0)
    cfg = tiny_cfg(tmp_path, "world_model.pose_weight=0.0", "world_model.lr=5e-3", "trainer.max_steps=80",
                   f"world_model.dis_cond={dis_cond}")
    module = build_module(cfg, V, GRID, None)
    train, val = planted(256, 0), planted(128, 1)
    fit(cfg, module, train, 32, 80, tmp_path)
    module.eval()
    b = {k: torch.stack([v[k] for v in val]) for k in val[0]}
    with torch.no_grad():
        out = module.model(b["tokens"].long(), b["rel_pose"], b["speed"])
    mask = b["disengage_mask"][..., None].expand(-1, -1, -1, 3).clone()
    mask[:, 0] = 0
    res = disengage_metrics(torch.sigmoid(out["disengage"]), b["disengage"], mask, (0.5, 1.0, 2.0, 4.0))
    assert res["auroc_2s_steer"] > 0.95, res["auroc_2s_steer"]
    assert 0.1 < res["base_rate_2s_steer"] < 0.5
    # calibrated (the class-balanced head plus the training prior's log-odds): the mean predicted
    # probability is the positive rate, not the 50% a balanced head would say
    sel = mask[:, :, 2, 0] > 0
    mean_p = float(torch.sigmoid(out["disengage"][:, :, 2, 0])[sel].mean())
    assert abs(mean_p - res["base_rate_2s_steer"]) < 0.08, (mean_p, res["base_rate_2s_steer"])


def test_checkpoint_resume_continues_the_same_loss_curve(tmp_path):
    cfg = tiny_cfg(tmp_path, "world_model.cond_drop=0.0", "trainer.checkpoint_every_n_steps=5", "trainer.max_steps=10")
    tok, pose, speed = window(b=20, k=K, seed=3)
    items = [{"tokens": tok[i], "rel_pose": pose[i], "speed": speed[i]} for i in range(20)]  # 5 batches / epoch

    L.seed_everything(0)
    straight, _ = fit(cfg, build_module(cfg, V, GRID, None), items, 4, 10, tmp_path / "a")
    L.seed_everything(0)
    first, _ = fit(cfg, build_module(cfg, V, GRID, None), items, 4, 5, tmp_path / "b")
    L.seed_everything(123)  # a different seed: everything must come from the checkpoint
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    second, trainer = fit(cfg, build_module(cfg, V, GRID, None), items, 4, 10, tmp_path / "b", ckpt_path=str(last))
    assert trainer.global_step == 10 and len(second) == 5
    np.testing.assert_allclose(first + second, straight, rtol=1e-5)
    assert straight[-1] < straight[0]
    # the Lightning checkpoint and an export load to the same model
    m = load_world_model(last)
    assert m.cfg.grid == GRID and m.cfg.context_frames == 2
    path = save_world_model(m, tmp_path / "wm.pt")
    m2 = load_world_model(path)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_per_position_flow_moves_one_row_and_not_the_others():
    """prev_flow: zero at start (the affine warp exactly); a basis that moves only the bottom token
    row by one column for this move shifts what that row's slots read, and leaves the rows above."""
    m = tiny_model(prev_frame=1, prev_warp=True, prev_flow=True)
    ref = tiny_model(prev_frame=1, prev_warp=True)
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if k != "prev_flow_basis"})
    g = torch.Generator().manual_seed(0)
    prev = torch.randint(0, V, (1, *GRID), generator=g)
    feats = torch.zeros(1, 7)
    feats[0, 5] = 1.0  # the move's yaw feature alone
    torch.testing.assert_close(m.prev_features(prev, 1, feats), ref.prev_features(prev, 1, feats))
    h, w, n = GRID[0], GRID[1], GRID[0] * GRID[1]
    with torch.no_grad():
        m.prev_flow_basis[5, h - 1, :, 0] = 2.0 / w  # bottom row: one column to the right, per unit of yaw
    base = ref.prev_features(prev, 1, feats)[0, 1:n].reshape(-1, 32)
    got = m.prev_features(prev, 1, feats)[0, 1:n].reshape(-1, 32)
    full = torch.cat([torch.zeros(1, 32), base]).view(h, w, 32)  # slot 0 is the start token's
    out = torch.cat([torch.zeros(1, 32), got]).view(h, w, 32)
    torch.testing.assert_close(out[:h - 1], full[:h - 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[h - 1, :-1], full[h - 1, 1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prev_warp"):
        tiny_model(prev_frame=1, prev_flow=True)


def test_optimizer_lets_lightning_clip_gradients_under_mixed_precision_on_a_gpu(tmp_path, monkeypatch):
    """Lightning refuses to clip (trainer.gradient_clip_val) the gradients of an optimizer that
    unscales them itself (a fused AdamW) under mixed precision: the first H100 run of the world
    model stopped at step 0 on it. The module is made to believe it sits on a GPU."""
    from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module = build_module(tiny_cfg(tmp_path), V, GRID, None)
    module._device = torch.device("cuda", 0)
    opt = module.configure_optimizers()["optimizer"]
    assert module.device.type == "cuda"
    assert not _optimizer_handles_unscaling(opt)


def test_context_noise_corrupts_context_frames_only_and_only_in_training():
    """``context_noise``: a fraction r ~ U(0, max) of each context frame's tokens is replaced in the
    input (the frame predicted last never), the loss's targets stay the clean tokens, and eval mode
    (the held-out figures, sampling) reads the window as it is."""
    m = tiny_model(context_noise=0.5, decoding="maskgit")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (512, K, *GRID), generator=g)
    noisy = m.corrupt_context(tokens, generator=g)
    changed = (noisy != tokens).float()
    assert changed[:, -1].sum() == 0
    # replaced with probability r ~ U(0, 0.5), and a random token equals the old one 1 time in V
    assert changed[:, :-1].mean().item() == pytest.approx(0.25 * (1 - 1 / V), abs=0.02)
    per_frame = changed[:, :-1].flatten(2).mean(-1)  # each frame its own ratio
    assert per_frame.max() > 0.35 and per_frame.min() == 0 and per_frame.std() > 0.1
    with pytest.raises(ValueError, match="context_noise"):
        tiny_model(context_noise=1.0)
    # eval mode: the loss of a clean window is deterministic; training mode reads corrupted context
    batch = dict(zip(("tokens", "rel_pose", "speed"), window(b=4)))
    masked = torch.zeros(4, K, GRID[0] * GRID[1], dtype=torch.bool)
    masked[:, -1] = True
    out_a, out_b = {}, {}
    assert m.compute_loss(batch, masked=masked, outputs=out_a)[0] == m.compute_loss(batch, masked=masked)[0]
    m.train()
    torch.manual_seed(1)
    m.compute_loss(batch, masked=masked, outputs=out_b)
    assert torch.equal(out_a["target_tokens"], out_b["target_tokens"])  # clean targets
    assert not torch.allclose(out_a["logits"][:, -1], out_b["logits"][:, -1])  # from corrupted context


STEPS_NOISE = 600
KN = 5  # frames per window of the context-noise test: four context frames to vote


def _shifting(n, g):
    """Windows of random first frames, each next frame the last one rolled by a column."""
    first = torch.randint(0, V, (n, *GRID), generator=g)
    return torch.stack([first.roll(k, dims=-1) for k in range(KN)], 1)


def _next_frame_accuracy(m, tokens, pose, speed, noise, g):
    """Greedy one-pass accuracy on the last frame (masked whole) from context frames with a fraction
    ``noise`` of their tokens replaced by random ones."""
    hit = torch.rand(tokens.shape, generator=g) < noise
    hit[:, -1] = False
    ctx = torch.where(hit, torch.randint(0, V, tokens.shape, generator=g), tokens)
    with torch.no_grad():
        logits = m.eval()(ctx, pose, speed)["logits"][:, -1]
    return (logits.argmax(-1) == tokens[:, -1].flatten(1)).float().mean().item()


def test_context_noise_teaches_the_model_to_read_past_corrupted_context():
    """Each frame is the previous one shifted, so the last frame can be read from any context frame.
    Trained on clean windows, a model copies the last context frame, errors included; trained with
    ``context_noise`` it learns to read past them, from the frames before (learning test)."""
    g = torch.Generator().manual_seed(0)
    test = _shifting(256, g)
    pose, speed = torch.zeros(256, KN, 6), torch.ones(256, KN)
    acc = {}
    for noise in (0.0, 0.5):
        torch.manual_seed(0)
        # the previous-frame path reads the last context frame (copying is easy); attention reads the others
        m = WorldModel(WorldModelConfig(vocab_size=V, grid=GRID, max_frames=KN, n_layer=2, n_head=2, n_embd=32,
                                        decoding="maskgit", context_noise=noise, cond_drop=0.0, prev_frame=3,
                                        prev_warp=True))
        m.fit_conditioning(pose[:64], speed[:64])
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        gt = torch.Generator().manual_seed(1)
        m.train()
        for _ in range(STEPS_NOISE):
            batch = {"tokens": _shifting(64, gt), "rel_pose": pose[:64], "speed": speed[:64]}
            loss, _ = m.compute_loss(batch, dis_weight=0.0, pose_weight=0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc[noise] = (_next_frame_accuracy(m, test, pose, speed, 0.0, torch.Generator().manual_seed(2)),
                      _next_frame_accuracy(m, test, pose, speed, 0.3, torch.Generator().manual_seed(2)))
    # measured: clean context 1.00 / 1.00; 30% of the context replaced: 0.50 trained clean, 0.79 with the noise
    assert acc[0.0][0] > 0.85 and acc[0.5][0] > 0.85, acc  # both learned the shift on clean context
    assert acc[0.5][1] > acc[0.0][1] + 0.1, acc  # corrupted context: reading past the errors beats copying


def test_rollout_snap_is_what_later_steps_read_and_the_frames_stay_generated():
    """``rollout(snap=...)``: each generated frame is returned as generated, and the later steps
    read ``snap`` of it: the same as stepping by hand from the snapped context."""
    from drivegpt.world_model.sampling import rollout, step

    m = tiny_model(decoding="maskgit", mask_steps=2, prev_frame=3, prev_warp=True)
    tokens, pose, speed = window(b=3, k=K + 3)
    ctx, cpose, cspeed, fpose, fspeed = tokens[:, :K], pose[:, :K], speed[:, :K], pose[:, K:], speed[:, K:]
    snap = lambda t: (t + 1) % V  # noqa: E731
    frames, _ = rollout(m, ctx, cpose, cspeed, fpose, fspeed, temperature=0.0, snap=snap)
    plain, _ = rollout(m, ctx, cpose, cspeed, fpose, fspeed, temperature=0.0)
    read, rp, rs = ctx, cpose, cspeed
    for j in range(frames.shape[1]):
        nxt, _ = step(m, read, rp, rs, temperature=0.0)
        assert torch.equal(frames[:, j], nxt)  # returned: the generated frame
        if j + 1 < frames.shape[1]:
            read = torch.cat([read, snap(nxt)[:, None]], 1)[:, -K:]  # read: its snap
            rp, rs = torch.cat([rp, fpose[:, j:j + 1]], 1)[:, -K:], torch.cat([rs, fspeed[:, j:j + 1]], 1)[:, -K:]
    assert torch.equal(frames[:, 0], plain[:, 0]) and not torch.equal(frames[:, 1:], plain[:, 1:])
