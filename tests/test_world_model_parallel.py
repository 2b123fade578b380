"""Parallel (MaskGIT) frame decoding: block-causal attention, the cached parallel decode equals
its definition (the model's full forward, pass by pass), the cosine commit schedule, guidance on
the commanded move alone, and a tiny model that learns to generate a frame in a few passes."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from drivegpt.world_model import WorldModel, WorldModelConfig
from drivegpt.world_model import sampling
from drivegpt.world_model.sampling import masked_after

V, GRID, K = 16, (2, 4), 3
N = GRID[0] * GRID[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_maskgit(dtype=torch.float32, **kw) -> WorldModel:
    torch.manual_seed(0)
    cfg = WorldModelConfig(vocab_size=V, grid=GRID, max_frames=K + 1, n_layer=2, n_head=2, n_embd=32,
                           prev_frame=3, prev_warp=True, dis_cond=True, decoding="maskgit", mask_steps=3, **kw)
    m = WorldModel(cfg).to(dtype).eval()
    with torch.no_grad():  # a fresh warp is the identity and fresh weights are near-uniform: make both matter
        m.prev_theta.weight.normal_(0.0, 0.1)
        for p in m.blocks.parameters():
            p.normal_(0.0, 0.2)
    return m


def window(b=3, k=K, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (b, k, *GRID), generator=g),
            torch.randn(b, k, 6, generator=g).to(dtype), torch.rand(b, k, generator=g).to(dtype) * 10)


def test_attention_is_block_causal_and_start_tokens_do_not_see_their_frame():
    m = tiny_maskgit()
    tok, pose, speed = window()
    none = torch.zeros(3, K, N, dtype=torch.bool)
    base = m(tok, pose, speed, masked=none)
    tok2 = tok.clone()
    tok2[:, 1, 1, 3] = (tok2[:, 1, 1, 3] + 1) % V  # the last image token of frame 1
    out = m(tok2, pose, speed, masked=none)
    torch.testing.assert_close(out["logits"][:, 0], base["logits"][:, 0], rtol=0, atol=0)  # the past
    torch.testing.assert_close(out["disengage"][:, :2], base["disengage"][:, :2], rtol=0, atol=0)  # S_1 sees frame 0
    # every image token of frame 1, the first one included, sees the changed token; so does frame 2
    assert not torch.isclose(out["logits"][:, 1, 0], base["logits"][:, 1, 0]).all()
    assert not torch.allclose(out["disengage"][:, 2], base["disengage"][:, 2])
    # a masked token reads the mask embedding, not its value, in its own frame's attention (the
    # next frame's previous-frame path reads the frame's true tokens, as it does when sampling)
    masked = none.clone()
    masked[:, 1, -1] = True
    a, b = m(tok, pose, speed, masked=masked), m(tok2, pose, speed, masked=masked)
    torch.testing.assert_close(a["logits"][:, :2], b["logits"][:, :2], rtol=0, atol=0)
    # the move into frame 2 is visible from frame 2 on only
    pose2 = pose.clone()
    pose2[:, 1] += 1.0
    out = m(tok, pose2, speed, masked=none)
    torch.testing.assert_close(out["logits"][:, :2], base["logits"][:, :2], rtol=0, atol=0)
    assert not torch.allclose(out["logits"][:, 2], base["logits"][:, 2])


@pytest.mark.parametrize("n_frames,past", [(3, 0), (1, 2), (2, 1)])
def test_frame_blocks_attend_as_the_dense_frame_mask(n_frames, past):
    """The decoders' frame-by-frame attention (no mask tensor) equals SDPA under the dense frame
    mask, for the context's pass (past 0) and for a frame's pass against cached frames; its
    dense form is frame_mask's pattern, and mismatched lengths are refused."""
    import torch.nn.functional as F

    from drivegpt.world_model.model import FrameBlocks

    m = tiny_maskgit()
    blocks = m.frame_blocks(n_frames, past)
    assert blocks == FrameBlocks(n_frames, N + 1, past)
    mask = m.frame_mask(n_frames, past)
    assert torch.equal(blocks.dense(), mask)
    # the start token sees the earlier frames and itself; an image token everything to the end of its frame
    assert mask[0].sum() == past * (N + 1) + 1 and mask[1].sum() == (past + 1) * (N + 1)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, n_frames * (N + 1), 8, generator=g)
    k, v = (torch.randn(2, 3, (past + n_frames) * (N + 1), 8, generator=g) for _ in range(2))
    torch.testing.assert_close(blocks.attention(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="queries"):
        blocks.attention(q[:, :, 1:], k, v)


@pytest.mark.parametrize("steps", [1, 3, N])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_parallel_decoding_equals_its_definition(cfg_scale, steps):
    """The cached decode (one context pass, ``steps`` passes of the frame's slots against it, the
    commanded move alone dropped for guidance) picks what the model's full forward over the
    window picks, pass by pass (greedy, float64)."""
    m = tiny_maskgit(torch.float64)
    tok, pose, speed = window(dtype=torch.float64, seed=1)
    cached, dis_c = sampling.generate_frame(m, tok, pose, speed, temperature=0.0, cfg_scale=cfg_scale, steps=steps)
    full, dis_f = sampling.generate_frame_full(m, tok, pose, speed, temperature=0.0, cfg_scale=cfg_scale,
                                               steps=steps)
    assert torch.equal(cached, full)
    torch.testing.assert_close(dis_c, dis_f)
    if steps == 1 and cfg_scale == 1.0:  # one pass = the argmax of the teacher-forced forward, last frame masked
        ext = m(torch.cat([tok, cached[:, None]], 1), torch.cat([pose, pose[:, :1]], 1),
                torch.cat([speed, speed[:, :1]], 1))
        assert torch.equal(ext["logits"][:, K].argmax(-1).view_as(cached), cached)


def test_guidance_drops_the_commanded_move_alone():
    """At scale 0 the frame is the model's with the commanded move dropped and the context's moves
    kept (per-frame dropout), so changing the commanded move changes nothing, and changing a
    context move still does."""
    m = tiny_maskgit(torch.float64)
    tok, pose, speed = window(dtype=torch.float64, seed=2)
    turned = pose.clone()
    turned[:, -1] *= -3.0

    def decode(p, scale):  # the frame and its tokens' entropies (they follow the guided logits)
        return sampling.generate_frame(m, tok, p, speed, temperature=0.0, cfg_scale=scale, return_entropy=True)

    a, _, ent_a = decode(pose, 0.0)
    b, _, ent_b = decode(turned, 0.0)
    assert torch.equal(a, b) and torch.equal(ent_a, ent_b)
    _, _, ent_c = decode(turned, 1.0)
    assert not torch.allclose(ent_a, ent_c)
    earlier = pose.clone()
    earlier[:, 0] *= -3.0
    lg = lambda p: m(tok, p, speed, torch.eye(K, dtype=torch.bool)[-1].expand(3, K))["logits"][:, -1]  # noqa: E731
    assert not torch.allclose(lg(pose), lg(earlier))


def test_the_commit_schedule_is_cosine_and_commits_are_final():
    assert [masked_after(128, t, 8) for t in range(8)] == [125, 118, 106, 90, 71, 48, 24, 0]
    assert [masked_after(4, t, 8) for t in range(8)] == [3, 2, 1, 0, 0, 0, 0, 0]  # >= 1 a pass while any is left
    g = torch.Generator().manual_seed(0)
    b, n, steps = 4, 128, 8
    out = torch.full((b, n), -1, dtype=torch.long)
    masked = torch.ones(b, n, dtype=torch.bool)
    for t in range(steps):
        before = out.clone()
        logits = torch.randn(b, n, V, generator=g) * 3
        new, _ = sampling._commit(logits, masked, out, t, steps, 1.0, None, g)
        assert (masked.sum(-1) == masked_after(n, t, steps)).all()
        assert torch.equal(out[~new], before[~new])  # committed tokens never change
        assert (out[new] >= 0).all() and not (new & masked).any()
    assert not masked.any() and (out >= 0).all()


def test_a_tiny_model_learns_to_generate_a_frame_in_three_passes():
    """Four memorised windows: after training, three parallel passes regenerate each window's last
    frame from its context (greedy), which an untrained model does not."""
    L.seed_everything(0)
    cfg = WorldModelConfig(vocab_size=V, grid=GRID, max_frames=K + 1, n_layer=2, n_head=2, n_embd=64,
                           cond_drop=0.0, prev_frame=3, prev_warp=True, decoding="maskgit", mask_steps=3)
    m = WorldModel(cfg)
    tok, pose, speed = window(b=4, k=K + 1, seed=3)
    batch = {"tokens": tok, "rel_pose": pose, "speed": speed}
    hit = lambda: (sampling.generate_frame(m.eval(), tok[:, :K], pose[:, :K], speed[:, :K],  # noqa: E731
                                           temperature=0.0)[0] == tok[:, K]).float().mean()
    before = float(hit())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m.train()
    losses = []
    for _ in range(300):
        loss, _ = m.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = float(hit())
    assert sum(losses[-20:]) / 20 < 0.3 * sum(losses[:20]) / 20, (losses[:3], losses[-3:])
    assert before < 0.3 and after > 0.95, (before, after)


def test_maskgit_settings_are_checked():
    with pytest.raises(ValueError, match="decoding"):
        WorldModelConfig(decoding="diffusion")
    with pytest.raises(ValueError, match="mask_steps"):
        WorldModelConfig(decoding="maskgit", mask_steps=0)
    ar = WorldModel(WorldModelConfig(vocab_size=V, grid=GRID, max_frames=K, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="autoregressively"):
        ar(*window(k=K), masked=torch.zeros(3, K, N, dtype=torch.bool))
