"""Tokenizer model and quantizers: gradients, EMA, dead codes, FSQ lattice, shapes, bad input."""

import numpy as np
import pytest
import torch

from drivegpt.config import compose
from drivegpt.tokenizer import Tokenizer, TokenizerInputError, load_tokenizer, save_tokenizer
from drivegpt.tokenizer.model import to_float
from drivegpt.tokenizer.quantizers import FSQ, EMAVectorQuantizer


def tiny_cfg(*overrides):
    return compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x", *overrides]).tokenizer


def frames(b=2, h=32, w=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_straight_through_gradient_reaches_encoder(quantizer):
    torch.manual_seed(0)
    model = Tokenizer(tiny_cfg(f"tokenizer.quantizer={quantizer}")).train()
    x = to_float(frames())
    recon, _, q_loss = model(x)
    # only the reconstruction term: the encoder's gradient must come through the quantizer
    torch.nn.functional.mse_loss(recon, x).backward()
    first = model.encoder.net[0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_ema_update_moves_codes_toward_assigned_vectors():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(4, 3, decay=0.5, kmeans_init=False)
    vq.embed.copy_(torch.eye(4, 3) * 5)
    vq.embed_avg.copy_(vq.embed)
    x = torch.tensor([[4.0, 1.0, 0.0], [4.5, 0.5, 0.5], [0.0, 6.0, 1.0]])  # 2 -> code 0, 1 -> code 1
    idx = vq.lookup(x)
    assert idx.tolist() == [0, 0, 1]
    before = [torch.dist(vq.embed[0], x[:2].mean(0)), torch.dist(vq.embed[1], x[2])]
    untouched = vq.embed[3].clone()
    vq.ema_update(x, idx)
    after = [torch.dist(vq.embed[0], x[:2].mean(0)), torch.dist(vq.embed[1], x[2])]
    assert after[0] < 0.75 * before[0] and after[1] < 0.75 * before[1]
    assert torch.allclose(vq.embed[3], untouched, atol=0.05)  # unused code barely moves (smoothing)
    assert vq.unused_steps.tolist() == [0, 0, 1, 1]


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(8, 2, decay=0.9, kmeans_init=False, dead_after=3).train()
    vq.embed.copy_(torch.randn(8, 2) * 0.01 + 100.0)  # the whole codebook far from the data...
    vq.embed[0] = torch.zeros(2)  # ...except code 0, which wins every lookup
    vq.embed_avg.copy_(vq.embed)
    z = torch.randn(4, 2, 4, 4)  # data around the origin: [b, d, h, w]
    used_first = set()
    for _ in range(3):
        _, idx, _ = vq(z)
        used_first |= set(idx.unique().tolist())
    assert used_first == {0}
    # after dead_after steps, the 7 dead codes were re-seeded from encoder outputs near the data
    assert (vq.embed[1:].norm(dim=1) < 10).all()
    _, idx, _ = vq(z)
    assert len(idx.unique()) >= 4


def test_fsq_round_trip_exact_on_lattice():
    fsq = FSQ([8, 5, 4], dim=3)
    ids = torch.arange(fsq.vocab_size)
    codes = fsq.indices_to_codes(ids)
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    assert len({tuple(c) for c in codes.tolist()}) == fsq.vocab_size
    # pre-images of every lattice point quantize back to exactly that point
    lv = fsq.levels.float()
    half = (lv - 1) * (1 + 1e-3) / 2
    offset = torch.where(fsq.levels % 2 == 0, 0.5, 0.0)
    target = codes * (fsq.levels // 2).float()
    z = torch.atanh((target + offset) / half) - torch.atanh(offset / half)
    assert torch.equal(fsq.quantize(z), codes)
    assert torch.equal(fsq.codes_to_indices(fsq.quantize(z)), ids)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_encode_decode_shapes(quantizer):
    model = Tokenizer(tiny_cfg(f"tokenizer.quantizer={quantizer}")).eval()
    assert model.frame_size == (32, 64) and model.grid == (4, 8) and model.vocab_size == 64
    tokens = model.encode(frames(3))
    assert tokens.shape == (3, 4, 8) and tokens.dtype == torch.int64
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
    out = model.decode(tokens)
    assert out.shape == (3, 32, 64, 3) and out.dtype == torch.uint8
    feats = model.embed(tokens)
    assert feats.shape == (3, 4, 8, 8) and feats.dtype.is_floating_point
    # encode is deterministic in eval mode
    assert torch.equal(model.encode(frames(3)), tokens)


def test_default_config_is_commavq_shaped():
    cfg = compose("train_tokenizer", ["run_dir=/tmp/x"]).tokenizer
    assert (cfg.frame_height, cfg.frame_width, cfg.downsample, cfg.codebook_size) == (128, 256, 16, 1024)
    fsq = FSQ(list(cfg.fsq.levels), 4)
    assert fsq.vocab_size == 1024


def test_bad_frames_are_rejected_with_a_clear_message():
    model = Tokenizer(tiny_cfg()).eval()
    with pytest.raises(TokenizerInputError, match=r"shape \(2, 64, 64, 3\).*32, 64"):
        model.encode(frames(2, 64, 64))
    with pytest.raises(TokenizerInputError, match="dtype torch.float32"):
        model.encode(frames().float())
    with pytest.raises(TokenizerInputError, match=r"ids outside \[0, 64\)"):
        model.decode(torch.full((1, 4, 8), 64))
    with pytest.raises(TokenizerInputError, match=r"expected \[b, 4, 8\]"):
        model.decode(torch.zeros((1, 8, 16), dtype=torch.long))


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = Tokenizer(tiny_cfg()).eval()
    path = save_tokenizer(model, tmp_path / "tokenizer.pt")
    loaded = load_tokenizer(tmp_path)  # a run directory works too
    assert not loaded.training
    f = frames(2)
    assert torch.equal(loaded.encode(f), model.encode(f))
    assert torch.equal(loaded.decode(model.encode(f)), model.decode(model.encode(f)))
    other = tiny_cfg("data.frame_height=64", "tokenizer.codebook_size=128")
    with pytest.raises(TokenizerInputError, match=r"frame_height: checkpoint has 32, config wants 64.*codebook_size"):
        load_tokenizer(path, expect=other)
    with pytest.raises(FileNotFoundError, match="no such tokenizer checkpoint"):
        load_tokenizer(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a DriveGPT tokenizer checkpoint"):
        load_tokenizer(tmp_path / "other.pt")


def test_edge_weighted_l1_charges_a_lost_lane_line_more_than_uniform_error():
    """Same total absolute error; erasing a thin high-contrast line must cost more than a
    uniform tint, so the tokenizer spends its bits on lane markings."""
    from drivegpt.tokenizer.losses import ReconstructionLoss, edge_weighted_l1

    target = torch.full((1, 3, 32, 64), -0.5)
    target[..., 20] = 0.9  # a 1-px bright line on dark asphalt
    erased = target.clone()
    erased[..., 20] = -0.5  # the line blurred away
    per_pixel = (erased - target).abs().mean()
    tinted = target + per_pixel  # uniform error with the same mean |error|
    assert torch.isclose((tinted - target).abs().mean(), per_pixel)
    assert edge_weighted_l1(erased, target) > 5 * edge_weighted_l1(tinted, target)
    with_edge = ReconstructionLoss(1.0, 0.0, 0.0, 0.0, edge=1.0)(erased, target)
    assert "edge" in with_edge and with_edge["rec"] > ReconstructionLoss(1.0, 0.0)(erased, target)["rec"]


def test_reconstruction_loss_is_computed_in_fp32_under_bf16_autocast():
    """bf16-mixed training (the CPU presets) must see the same loss as fp32: SSIM's variance
    (E[x^2] - mu^2) cancels catastrophically in bf16 and turned the loss NaN within a few steps."""
    from drivegpt.tokenizer.losses import ReconstructionLoss

    torch.manual_seed(0)
    target = torch.rand(4, 3, 32, 64) * 2 - 1
    recon = (target + 0.05 * torch.randn_like(target)).clamp(-1, 1)
    loss = ReconstructionLoss(1.0, 1.0, 0.2, 0.5, 1.0)
    ref = loss(recon, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(recon.bfloat16(), target)
    for k in ref:
        assert low[k].dtype == torch.float32 and torch.isfinite(low[k])
        assert torch.allclose(low[k], ref[k], rtol=2e-2, atol=1e-3), k  # recon rounded to bf16 only


def test_attention_block_gives_every_token_the_whole_frame():
    """tokenizer.attn_blocks: self-attention over the token grid at the encoder's end and the
    decoder's start. The block starts as the identity (zero output projection); once trained, a
    token's features depend on the content of every other position."""
    from drivegpt.tokenizer.model import AttnBlock

    model = Tokenizer(tiny_cfg("tokenizer.attn_blocks=1"))
    assert sum(isinstance(m, AttnBlock) for m in model.modules()) == 2
    torch.manual_seed(0)
    block = AttnBlock(32)
    x = torch.randn(2, 32, 4, 8)
    assert torch.equal(block(x), x)  # identity at init
    torch.nn.init.normal_(block.proj.weight, std=0.2)
    block.norm = torch.nn.Identity()  # per-position maps only: what moves the corner is the attention
    y = x.clone()
    y[:, :, 0, 0] += torch.randn(2, 32)  # the far corner only
    moved = (block(y) - block(x))[:, :, -1, -1].abs().amax()
    assert moved > 1e-3


def test_checkpoint_without_attention_key_still_matches(tmp_path):
    """A checkpoint written before ``attn_blocks`` existed was built without attention."""
    from drivegpt.checkpoints import TOKENIZER, read_artifact, save_artifact

    model = Tokenizer(tiny_cfg()).eval()
    path = save_tokenizer(model, tmp_path / "tokenizer.pt")
    art = read_artifact(path, TOKENIZER)
    old = {k: v for k, v in art.config.items() if k != "attn_blocks"}
    save_artifact(tmp_path / "old.pt", TOKENIZER, old, art.state_dict)
    loaded = load_tokenizer(tmp_path / "old.pt", expect=tiny_cfg())
    assert torch.equal(loaded.encode(frames(1)), model.encode(frames(1)))
    with pytest.raises(TokenizerInputError, match="attn_blocks: checkpoint has 0, config wants 1"):
        load_tokenizer(tmp_path / "old.pt", expect=tiny_cfg("tokenizer.attn_blocks=1"))
