"""Cluster training that cannot hang (README "Scale-out"): every rank gets the same number of
training and validation batches whatever the shard layout, a collective that is never matched
ends in an error naming the stage and the rank, and metrics over ranks equal one process.

The torchrun tests run the README's scale-out command (2 CPU processes, gloo) on a layout built
to hang the old loaders: every held-out segment in one shard, and the ranks' shards holding 1
and 4 training segments. Each run is bounded by a subprocess timeout and by
``trainer.collective_timeout_s``, so a regression fails instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drivegpt.config import compose
from drivegpt.data.loaders import split_of, window_dataset
from drivegpt.data.shards import write_shards
from drivegpt.data.shard_reading import iter_samples
from synth_fleet import make_segment

VAL_FRACTION = 0.3
RUN_TIMEOUT_S = 600  # per torchrun command: a bound, not a budget (measured 85-300 s per test at nice 19
                     # on 2 cores taken by a training job; not measured on an idle machine)
COLLECTIVE_TIMEOUT_S = 30


def _seeds(split: str, n: int) -> list[int]:
    out = [s for s in range(200) if split_of(f"seg{s:04d}", VAL_FRACTION) == split]
    return out[:n]


def layout_seeds() -> list[int]:
    """8 segments in 2 shards of 4: shard 0 = the 3 held-out segments + 1 training segment,
    shard 1 = 4 training segments (one shard per rank: unequal training work, all held-out
    segments on one rank)."""
    val, train = _seeds("val", 3), _seeds("train", 5)
    return val + train


def _token_item(seed: int) -> dict:
    t = 40  # 2 s at 20 Hz; a BRAKE takeover at 1.2 s: positive and negative labels in every segment
    seg = make_segment(seed=seed, t=t, frames=False, lane_mask=False, events={24: 2})
    item = {k: v for k, v in seg.arrays().items() if k != "traffic"}
    item["tokens"] = np.random.default_rng(seed).integers(0, 64, (t, 2, 4)).astype(np.int16)
    item["meta"] = dict(seg.meta, tokens={"vocab_size": 64, "grid": [2, 4], "tokenizer_path": None})
    return item


class _TokenItems:
    def __init__(self, seeds):
        self.seeds = seeds

    def __call__(self, i):
        return _token_item(self.seeds[i])


class _FrameItems:
    def __init__(self, seeds, t=8):
        self.seeds, self.t = seeds, t

    def __call__(self, i):
        return make_segment(seed=self.seeds[i], t=self.t)


def write_layout(out: Path, kind: str) -> list[str]:
    seeds = layout_seeds()
    make = _TokenItems(seeds) if kind == "tokens" else _FrameItems(seeds)
    write_shards(out, len(seeds), make, maxcount=4, progress=False)
    return [f"seg{s:04d}" for s in seeds]


def torchrun(args: list[str], cwd: Path, timeout: int = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m drivegpt ARGS`` (the README's command), in
    its own process group: on timeout the launcher and both ranks are killed."""
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "drivegpt", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s (hang?): {' '.join(args)}\n"
                    f"{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _audits(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "audit" / f"rank{r}.json").read_text()) for r in (0, 1)]


def _check_ranks(run_dir: Path) -> list[dict]:
    a = _audits(run_dir)
    assert [x["world_size"] for x in a] == [2, 2]
    assert a[0]["batches"] == a[1]["batches"], f"ranks ran different work: {a[0]['batches']} vs {a[1]['batches']}"
    assert a[0]["params_sha256"] == a[1]["params_sha256"], "ranks ended with different weights"
    assert a[0]["params_sha256"] != a[0]["params_initial_sha256"], "the weights did not change"
    return a


# ----------------------------------------------------------------------------- fast unit tests
def test_even_split_same_count_per_rank_each_held_out_window_once(tmp_path, monkeypatch):
    ids = write_layout(tmp_path / "tokens", "tokens")
    one = [(w["segment_id"], w["start"]) for w in window_dataset(tmp_path / "tokens", 3, 2, key="tokens",
                                                                 split="val", val_fraction=VAL_FRACTION,
                                                                 shuffle_buffer=0)]
    assert {s for s, _ in one} == set(ids[:3])
    for world in (2, 3):
        per_rank = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            per_rank.append(list(window_dataset(tmp_path / "tokens", 3, 2, key="tokens", split="val",
                                                val_fraction=VAL_FRACTION, shuffle_buffer=0, even=True)))
        counts = {len(p) for p in per_rank}
        assert counts == {-(-len(one) // world)}, counts
        real = [(w["segment_id"], w["start"]) for p in per_rank for w in p if w["valid"]]
        assert sorted(real) == sorted(one) and len(set(real)) == len(one)  # each window once
        assert sum(not w["valid"] for p in per_rank for w in p) == world * counts.pop() - len(one)


def test_resampled_by_default_on_several_ranks(tmp_path, monkeypatch):
    from drivegpt.data.datamodule import FleetDataModule

    write_layout(tmp_path / "tokens", "tokens")
    cfg = compose("train_world_model", ["experiment=tiny", f"data.shards={tmp_path / 'tokens'}",
                                        f"run_dir={tmp_path / 'run'}", "data.epoch_samples=24"])
    dm = FleetDataModule(cfg, kind="windows", key="tokens")
    assert not dm.is_resampled()  # one process: every sample once per epoch
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dm.is_resampled() and not dm.is_resampled("val")
    assert len(list(dm.train_dataloader())) == 24 // cfg.data.batch_size
    cfg.data.epoch_samples = None
    with pytest.raises(ValueError, match="epoch_samples"):  # no trainer attached: no step budget
        dm.train_dataloader()


def test_collective_failure_names_stage_and_rank():
    from drivegpt.training import CollectiveError, collective_errors

    with pytest.raises(CollectiveError, match=r"train_world_model: rank 0 of 1: .*collective_timeout_s=5 s"):
        with collective_errors("train_world_model", None, 5):
            raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv")
    with pytest.raises(CollectiveError, match=r"tokenize: rank 0 of 1: .*another rank died"):
        with collective_errors("tokenize", None, 5):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    with pytest.raises(KeyError):  # anything else passes through unchanged
        with collective_errors("train_world_model", None, 5):
            raise KeyError("x")


def test_strategies_get_the_collective_timeout():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from drivegpt.training import make_strategy

    ddp = compose("train_world_model", ["trainer=ddp", "trainer.collective_timeout_s=42", "run_dir=/tmp/x"])
    s = make_strategy(ddp.trainer)
    assert isinstance(s, DDPStrategy) and s._timeout.total_seconds() == 42
    assert make_strategy(compose("train_world_model", ["trainer=slurm", "run_dir=/tmp/x"]).trainer)._timeout.total_seconds() == 600
    assert isinstance(make_strategy(compose("train_world_model", ["trainer=fsdp", "run_dir=/tmp/x"]).trainer), FSDPStrategy)
    assert make_strategy(compose("train_world_model", ["trainer=cpu", "run_dir=/tmp/x"]).trainer) == "auto"


# ----------------------------------------------------------------------------- the README command, 2 ranks
COMMON = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
          "data.num_workers=0", f"data.val_fraction={VAL_FRACTION}", "trainer.audit=true",
          f"trainer.collective_timeout_s={COLLECTIVE_TIMEOUT_S}", "trainer.enable_progress_bar=false"]


def _one_process_validate(cfg, module, dm) -> dict:
    from drivegpt.training import make_trainer

    trainer = make_trainer(cfg, cfg.run_dir, "reference", logger=False)
    (res,) = trainer.validate(module, datamodule=dm, verbose=False)
    return res


@pytest.mark.slow
def test_readme_torchrun_world_model_uneven_shards(tmp_path):
    from drivegpt.data.datamodule import FleetDataModule
    from drivegpt.stages.common import bind_fps
    from drivegpt.stages.train_world_model import build_module, token_meta

    write_layout(tmp_path / "tokens", "tokens")
    run_dir = tmp_path / "wm"
    args = ["train", "world_model", "experiment=tiny", *COMMON, f"data.shards={tmp_path / 'tokens'}",
            "world_model.max_steps=10", f"run_dir={run_dir}"]
    r = torchrun(args, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    audits = _check_ranks(run_dir)
    assert audits[0]["batches"]["train"] == 10
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 10 and "val_auroc_0.5s" in metrics

    # the same final weights and held-out set on one process give the same validation metrics
    cfg = compose("train_world_model", ["experiment=tiny", f"data.shards={tmp_path / 'tokens'}",
                                        f"data.val_fraction={VAL_FRACTION}", f"run_dir={tmp_path / 'ref'}",
                                        "data.num_workers=0"])
    meta = token_meta(str(cfg.data.shards))
    bind_fps(cfg)  # data.fps from the shards, as the stage does
    module = build_module(cfg, meta["vocab_size"], meta["grid"], None)
    module.load_state_dict(torch.load(run_dir / "audit" / "final_rank0.pt", weights_only=True))
    ref = _one_process_validate(cfg, module, FleetDataModule(cfg, kind="windows", key="tokens"))
    for key in ("val/bits_per_token", "val/top1", "val/loss", "val/loss_disengage", "val/auroc_0.5s"):
        assert metrics[key.replace("/", "_")] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_readme_torchrun_tokenizer_uneven_shards(tmp_path):
    from drivegpt.data.datamodule import FleetDataModule
    from drivegpt.tokenizer.module import TokenizerModule

    write_layout(tmp_path / "fleet", "frames")
    run_dir = tmp_path / "tok"
    args = ["train", "tokenizer", "experiment=tiny", *COMMON, f"data.shards={tmp_path / 'fleet'}",
            "tokenizer.train_steps=6", f"run_dir={run_dir}"]
    r = torchrun(args, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    audits = _check_ranks(run_dir)
    assert audits[0]["batches"]["train"] == 6 and audits[0]["batches"]["val"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["tokenizer/steps"] == 6 and metrics["tokenizer/val_psnr"] is not None

    cfg = compose("train_tokenizer", ["experiment=tiny", f"data.shards={tmp_path / 'fleet'}",
                                      f"data.val_fraction={VAL_FRACTION}", f"run_dir={tmp_path / 'ref'}"])
    module = TokenizerModule(cfg.tokenizer, clip_val=None)
    module.load_state_dict(torch.load(run_dir / "audit" / "final_rank0.pt", weights_only=True))
    ref = _one_process_validate(cfg, module, FleetDataModule(cfg, kind="frames"))
    assert metrics["tokenizer/val_psnr"] == pytest.approx(ref["val/psnr"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_tokenize_unequal_shards_writes_each_segment_once(tmp_path):
    from drivegpt.tokenizer import Tokenizer, save_tokenizer

    write_shards(tmp_path / "fleet", 5, _FrameItems(list(range(5)), t=6), maxcount=2, progress=False)  # 2+2+1
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    ckpt = save_tokenizer(model, tmp_path / "tokenizer.pt")
    out = tmp_path / "tokens"
    r = torchrun(["tokenize", "experiment=tiny", *COMMON[:5], f"trainer.collective_timeout_s={COLLECTIVE_TIMEOUT_S}",
                  f"data.shards={tmp_path / 'fleet'}", f"checkpoint={ckpt}", f"out={out}",
                  f"run_dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    ids = [s["meta"]["segment_id"] for s in iter_samples(sorted(str(p) for p in out.glob("*/*.tar")))]
    assert sorted(ids) == [f"seg{i:04d}" for i in range(5)]  # every segment exactly once
    assert json.loads((out / "manifest.json").read_text())["complete"]


@pytest.mark.slow
def test_torchrun_mismatch_ends_in_an_error_naming_stage_and_rank(tmp_path):
    """Forcing the old behaviour (every sample once, ranks with 1 and 4 training segments) makes
    the ranks' batch counts differ: the run must fail, naming the stage and the rank, instead of
    hanging. (Measured: the rank that reaches validation first gets a size-mismatched message
    and gloo aborts it; the other rank's collective then fails and it raises CollectiveError on a
    loaded machine, while on an idle one torchrun stops it first and its summary names the rank.
    A rank left waiting with no peer failing would time out after collective_timeout_s.)"""
    write_layout(tmp_path / "tokens", "tokens")
    args = ["train", "world_model", "experiment=tiny", *COMMON[:-2], "trainer.collective_timeout_s=10",
            "data.resampled=false", f"data.shards={tmp_path / 'tokens'}",
            "world_model.max_steps=10", f"run_dir={tmp_path / 'wm'}"]
    r = torchrun(args, tmp_path)
    assert r.returncode != 0
    out = r.stderr + r.stdout
    # the rank that survives the mismatch names the stage and itself; when gloo's C++ abort of the
    # other rank makes torchrun stop it first (an idle machine), torchrun's summary names the rank
    assert ("CollectiveError: train_world_model: rank" in out
            or re.search(r"failed \(exitcode: -?\d+\) local_rank: \d", out)), r.stderr[-6000:]
