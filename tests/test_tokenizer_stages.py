"""Tokenizer stages: learning (overfit road-world frames), tokenize (bit-exact, exactly once,
resumable), eval metrics, bad input."""

import os
import tarfile

import numpy as np
import pytest
import torch

from drivegpt.data.loaders import NOT_ENCODED, segment_windows
from drivegpt.data.shards import write_shards
from drivegpt.data.shard_reading import iter_samples
from drivegpt.config import compose
from drivegpt.runs import read_json
from drivegpt.tokenizer import Tokenizer, load_tokenizer, save_tokenizer
from drivegpt.tokenizer.evaluate import Scorer
from drivegpt.tokenizer.losses import ReconstructionLoss, psnr
from drivegpt.tokenizer.model import to_float
from drivegpt.tokenizer.tokenize import EmptyShardError
from drivegpt.stages.tokenize import run as tokenize_run
from filestate import freeze, states
from synth_fleet import make_segment


@pytest.mark.slow
def test_tiny_tokenizer_overfits_road_world_frames():
    """A tiny VQ tokenizer (32x64 frames, 8x16 tokens, 64 codes) reaches >= 25 dB on 4
    road-world frames within 300 CPU steps (measured: 120 steps, 56 CPU-seconds; 130 s wall on 2
    cores shared with ~9 other jobs, load ~10)."""
    from drivegpt.sim.roadworld import drive_segment

    torch.manual_seed(0)
    seg = drive_segment(3, 2.0, None, 32, 64)
    frames = torch.from_numpy(seg.frames[::10][:4].copy())  # [4, 32, 64, 3]
    cfg = compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x", "tokenizer.downsample=4"]).tokenizer
    model = Tokenizer(cfg)
    x = to_float(frames)
    loss_fn = ReconstructionLoss(1.0, 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.5, 0.9))

    def quality():
        model.eval()
        p = float(psnr(to_float(model.decode(model.encode(frames))), x).mean())
        model.train()
        return p

    start, best, steps = quality(), 0.0, 0
    for steps in range(1, 301):
        recon, _, q_loss = model.train()(x)
        loss = loss_fn(recon, x)["rec"] + q_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if steps % 20 == 0:
            best = max(best, quality())
            if best >= 25.0:
                break
    assert start < 20.0
    assert best >= 25.0, f"PSNR {best:.1f} dB after {steps} steps"


def _write_fleet(d, n=5, maxcount=2, h=32, w=64):
    return write_shards(d, n, lambda i: make_segment(seed=i, t=12, h=h, w=w), maxcount=maxcount, progress=False)


def _tokenize_cfg(tmp_path, shards, ckpt, *extra):
    return compose("tokenize", ["experiment=tiny", f"run_dir={tmp_path / 'tok'}", f"data.shards={shards}",
                                f"checkpoint={ckpt}", "batch_size=5", *extra])


def test_tokenize_keeps_labels_bit_exact_every_segment_once_and_resumes(tmp_path):
    torch.manual_seed(0)
    _write_fleet(tmp_path / "fleet")
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    ckpt = save_tokenizer(model, tmp_path / "tokenizer.pt")
    cfg = _tokenize_cfg(tmp_path, tmp_path / "fleet", ckpt)
    metrics = tokenize_run(cfg)
    assert metrics["tokenize/segments"] == 5 and metrics["tokenize/complete"]

    inputs = {s.segment_id: s for s in iter_samples(tmp_path / "fleet")}
    outputs = list(iter_samples(metrics["tokenize/shards"]))
    ids = [o["meta"]["segment_id"] for o in outputs]
    assert sorted(ids) == sorted(inputs) and len(set(ids)) == len(ids)  # every segment exactly once
    for out in outputs:
        seg = inputs[out["meta"]["segment_id"]]
        assert out["tokens"].dtype == np.int16 and out["tokens"].shape == (len(seg), 4, 8)
        for name, arr in seg.arrays().items():  # labels, poses, extras: bit-exact
            got = out[name] if name in out else out["extras"][name]
            assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes(), name
        # tiny reads the log at stride 2: frames 0, 2, 4, ... are encoded, the others are -1
        every = out["meta"]["tokens"]["every"]
        assert every == cfg.data.stride == 2
        assert np.array_equal(out["tokens"][::every], model.encode(torch.from_numpy(seg.frames[::every])).numpy())
        assert (out["tokens"][1::every] == NOT_ENCODED).all()
        assert out["meta"]["tokens"]["vocab_size"] == 64 and out["meta"]["tokens"]["grid"] == [4, 8]
        assert out["meta"]["tokens"]["tokenizer"] == str(ckpt.resolve())

    # resume: a second run rewrites nothing; a lost part is rewritten identically
    tars = sorted((tmp_path / "tok" / "tokens").glob("*/*.tar"))
    frozen = freeze([*tars, *(tmp_path / "tok" / "tokens").glob("*/manifest.json")])
    data0 = tars[0].read_bytes()
    tokenize_run(cfg)
    assert states(frozen) == frozen  # same inode, the old mtime and the same bytes: not rewritten
    os.unlink(tars[0])
    os.unlink(tars[0].parent / "manifest.json")
    tokenize_run(cfg)
    assert tars[0].read_bytes() == data0
    assert read_json(tmp_path / "tok" / "tokens" / "manifest.json")["samples"] == 5


def test_tokenize_every_frame_and_windows_refuse_skipped_frames(tmp_path):
    """tokenize.every=1 encodes every frame; windows of a stride-2 token shard read only encoded
    frames, and a window that would read a skipped frame is refused by name."""
    torch.manual_seed(0)
    _write_fleet(tmp_path / "fleet", n=1)
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    ckpt = save_tokenizer(model, tmp_path / "tokenizer.pt")
    full = tokenize_run(_tokenize_cfg(tmp_path, tmp_path / "fleet", ckpt, "every=1"))
    (seg,) = iter_samples(tmp_path / "fleet")
    (out,) = iter_samples(full["tokenize/shards"])
    assert np.array_equal(out["tokens"], model.encode(torch.from_numpy(seg.frames)).numpy())

    strided = dict(out, tokens=np.where(np.arange(len(seg))[:, None, None] % 2 == 0, out["tokens"], NOT_ENCODED))
    wins = list(segment_windows(strided, 3, 2, key="tokens"))
    assert wins and all(np.array_equal(w["tokens"], out["tokens"][w["start"] + 2 * np.arange(3)]) for w in wins)
    with pytest.raises(ValueError, match=r"'tokens'.*frame\(s\) \[1, 7\].*tokenize.every=1"):
        list(segment_windows(strided, 3, 3, key="tokens", starts=[1]))


def test_tokenize_bad_input(tmp_path):
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer)
    ckpt = save_tokenizer(model, tmp_path / "tokenizer.pt")
    (tmp_path / "empty").mkdir()
    with tarfile.open(tmp_path / "empty" / "shard-000000.tar", "w"):
        pass
    with pytest.raises(EmptyShardError, match=r"shard-000000.tar: shard holds no segments"):
        tokenize_run(_tokenize_cfg(tmp_path, tmp_path / "empty", ckpt))
    _write_fleet(tmp_path / "small", n=1, h=16, w=32)
    with pytest.raises(ValueError, match=r"'frames'.*16x32 but the tokenizer takes 32x64"):
        tokenize_run(_tokenize_cfg(tmp_path, tmp_path / "small", ckpt, "data.resize=false"))


def test_scorer_metrics_known_values():
    s = Scorer(vocab_size=4)
    a = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] = 255  # one wrong pixel (all channels), inside the lane mask
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, :] = True
    s.add(a, b, torch.tensor([[[0, 0], [1, 1]]]), mask)
    m = s.metrics()
    assert m["psnr"] == pytest.approx(10 * np.log10(4.0), abs=1e-4)  # mse = 1/4 of full range
    assert m["lane_psnr"] == pytest.approx(10 * np.log10(2.0), abs=1e-4)  # mse = 1/2 inside the mask
    assert m["codebook_usage"] == 50.0 and m["perplexity"] == pytest.approx(2.0)


def test_train_stage_writes_checkpoint_pictures_and_resumes(tmp_path):
    from drivegpt.stages.train_tokenizer import run as train_run

    _write_fleet(tmp_path / "fleet", n=2, maxcount=1)
    common = ["experiment=tiny", f"run_dir={tmp_path / 'train'}", f"data.shards={tmp_path / 'fleet'}",
              "data.batch_size=4", "data.val_fraction=0", "tokenizer.image_every_n_steps=2"]
    m = train_run(compose("train_tokenizer", [*common, "tokenizer.train_steps=3",
                                              "trainer.checkpoint_every_n_steps=null"]))
    assert m["tokenizer/steps"] == 3 and m["tokenizer/resumed_from_step"] == 0
    for name in ("tokenizer.pt", "recon_grid.png", "codebook_usage.png", "checkpoints/last.ckpt", "metrics.json"):
        assert (tmp_path / "train" / name).exists(), name
    first = load_tokenizer(tmp_path / "train")
    m = train_run(compose("train_tokenizer", [*common, "tokenizer.train_steps=5", "trainer.ckpt_path=last",
                                              "trainer.checkpoint_every_n_steps=null"]))
    assert m["tokenizer/steps"] == 5 and m["tokenizer/resumed_from_step"] == 3  # continued from step 3
    second = load_tokenizer(tmp_path / "train" / "checkpoints" / "last.ckpt")
    assert bool(second.quantizer.initted)
    assert not torch.equal(first.encoder.net[0].weight, second.encoder.net[0].weight)


def test_train_stage_uses_its_own_batch_size(tmp_path):
    """``tokenizer.batch_size`` sets the frames per step of this stage only (data.batch_size is the
    world model's too): every step's codes are counted, so their total says how many frames it saw."""
    from drivegpt.stages.train_tokenizer import fit, run as train_run
    import drivegpt.stages.train_tokenizer as stage

    _write_fleet(tmp_path / "fleet", n=2, maxcount=1)
    common = ["experiment=tiny", f"data.shards={tmp_path / 'fleet'}", "data.batch_size=4", "data.val_fraction=0",
              "tokenizer.train_steps=3", "trainer.checkpoint_every_n_steps=null"]
    seen = {}

    def spy(cfg, datamodule, **kw):
        module, metrics = fit(cfg, datamodule, **kw)
        seen[cfg.run_dir] = (int(module.usage_counts.sum()), module.model.grid)
        return module, metrics

    stage.fit, orig = spy, stage.fit
    try:
        for bs, name in ((None, "shared"), (2, "own")):
            extra = [f"tokenizer.batch_size={bs}"] if bs else []
            m = train_run(compose("train_tokenizer", [*common, f"run_dir={tmp_path / name}", *extra]))
            counted, (gh, gw) = seen[str(tmp_path / name)]
            assert m["tokenizer/batch_size"] == (bs or 4)
            assert counted == 3 * (bs or 4) * gh * gw  # 3 steps of that many frames
    finally:
        stage.fit = orig


def test_ranks_split_input_shards_without_duplicates():
    from drivegpt.tokenizer.tokenize import _rank_urls

    urls = [f"s{i}.tar" for i in range(7)]
    per_rank = [_rank_urls(urls, r, 3) for r in range(3)]
    assert [len(p) for p in per_rank] == [3, 3, 3]  # padded with no-op steps: equal step counts
    flat = [u for p in per_rank for u in p if u is not None]
    assert sorted(flat) == sorted(urls) and len(flat) == len(set(flat))


def _assert_same_token_shards(one, two, n):
    a = sorted(p.relative_to(one) for p in one.glob("*/*.tar"))
    b = sorted(p.relative_to(two) for p in two.glob("*/*.tar"))
    assert a == b and len(a) == n
    for rel in a:
        assert (one / rel).read_bytes() == (two / rel).read_bytes()


@pytest.mark.slow
def test_tokenize_on_two_ddp_ranks_matches_one_process(tmp_path):
    _write_fleet(tmp_path / "fleet", n=4, maxcount=1)
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    ckpt = save_tokenizer(model, tmp_path / "tokenizer.pt")
    one = tokenize_run(_tokenize_cfg(tmp_path, tmp_path / "fleet", ckpt, f"out={tmp_path / 'one'}"))
    two = tokenize_run(_tokenize_cfg(tmp_path, tmp_path / "fleet", ckpt, f"out={tmp_path / 'two'}",
                                     "trainer.devices=2", "trainer.strategy=ddp_spawn"))
    assert one["tokenize/segments"] == two["tokenize/segments"] == 4
    _assert_same_token_shards(tmp_path / "one", tmp_path / "two", 4)


def test_tokenize_decoding_in_loader_workers_writes_the_same_bytes_and_skips_finished_parts(tmp_path):
    """data.num_workers > 0 reads the input shards in loader processes while the rank encodes:
    the token shards are byte-identical to reading them in the rank, and a re-run reads nothing
    of a part already complete (its summary says skipped)."""
    _write_fleet(tmp_path / "fleet", n=3, maxcount=1)
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    ckpt = save_tokenizer(model, tmp_path / "tokenizer.pt")
    one = tokenize_run(_tokenize_cfg(tmp_path, tmp_path / "fleet", ckpt, f"out={tmp_path / 'one'}"))
    par = _tokenize_cfg(tmp_path, tmp_path / "fleet", ckpt, f"out={tmp_path / 'two'}", "data.num_workers=2")
    two = tokenize_run(par)
    assert one["tokenize/segments"] == two["tokenize/segments"] == 3
    _assert_same_token_shards(tmp_path / "one", tmp_path / "two", 3)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*/*.tar")}
    again = tokenize_run(par)
    assert again["tokenize/segments"] == 3
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*/*.tar")} == before


def test_tiny_tokenizer_learns_in_bf16_autocast_with_every_loss_term():
    """bf16-mixed training (trainer.precision null on CPUs with native bf16): the demo's loss
    terms (SSIM, gradient, edge-weighted L1) and the attention block stay finite and the
    reconstruction improves. Before the loss ran in fp32, SSIM in bf16 went NaN in 4 steps."""
    from drivegpt.sim.roadworld import drive_segment

    torch.manual_seed(0)
    seg = drive_segment(3, 2.0, None, 32, 64)
    frames = torch.from_numpy(seg.frames[::5][:8].copy())
    cfg = compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x", "tokenizer.attn_blocks=1",
                                      "tokenizer.loss.ssim=0.2", "tokenizer.loss.gradient=0.5",
                                      "tokenizer.loss.edge=1.0"]).tokenizer
    model = Tokenizer(cfg)
    x = to_float(frames)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.5, 0.9))
    losses = []
    for _ in range(60):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, parts = model.compute_loss(x)
        assert all(torch.isfinite(v) for v in parts.values()), {k: float(v) for k, v in parts.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
