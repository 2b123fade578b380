"""Reliability of the main job: kill `drivegpt pipeline` during shard writing (SIGKILL), tokenizer
training (SIGTERM) and RL (SIGKILL); re-running completes, no partial artefact is taken as
complete, and the outputs match a clean run's manifests."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["experiment=tiny", "logger=none"]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "drivegpt", "pipeline", *TINY, f"run_dir={run_dir}", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def kill_when(proc: subprocess.Popen, ready, sig, timeout=300.0) -> None:
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}) before the kill point: "
                                 f"{proc.stderr.read().decode()[-3000:]}")
        assert time.time() - t0 < timeout, "kill point never reached"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)


def manifest_digest(shard_dir: Path) -> list:
    m = json.loads((shard_dir / "manifest.json").read_text())
    return sorted((s["name"], s["sha256"], s["samples"]) for s in m["shards"])


@pytest.mark.slow
def test_pipeline_survives_kills_and_matches_clean_run(tmp_path):
    run = tmp_path / "run"
    fleet, tok, rl = run / "01_fleet", run / "03_train_tokenizer", run / "09_rl"

    # 1) SIGKILL while the fleet's shards are being written (first shard landed, not all).
    p = start(run)
    kill_when(p, lambda: len(list((fleet / "shards").glob("*.tar"))) >= 1, signal.SIGKILL)
    assert not (fleet / "DONE").exists()

    # 2) SIGTERM during tokenizer training, once a checkpoint exists.
    p = start(run)
    kill_when(p, lambda: any((tok / "checkpoints").glob("*.ckpt")) if (tok / "checkpoints").exists() else False,
              signal.SIGTERM)
    assert (fleet / "DONE").exists() and not (tok / "DONE").exists()

    # 3) SIGKILL during RL, once an iteration's state is saved.
    p = start(run)
    kill_when(p, lambda: (rl / "checkpoints" / "rl_state.pt").exists(), signal.SIGKILL)
    assert (tok / "DONE").exists() and not (rl / "DONE").exists()

    # 4) The re-run completes.
    p = start(run)
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err.decode()[-3000:]
    done = sorted(d.name for d in run.iterdir() if (d / "DONE").exists())
    assert len(done) == 12 and (run / "report.html").exists()
    summary = json.loads((run / "metrics.json").read_text())["stages"]
    assert summary["fleet"]["status"] == "cached" and summary["export"]["status"] == "ran"

    # Outputs match clean runs: the fleet's shard manifest bit for bit, training to its full length.
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "drivegpt", "fleet", "generate", *TINY, f"run_dir={clean}",
                    f"out={clean}/shards"], check=True, capture_output=True)
    assert manifest_digest(fleet / "shards") == manifest_digest(clean / "shards")
    from drivegpt.config import compose

    cfg = compose("train_policy", TINY)
    tok_steps = json.loads((tok / "metrics.json").read_text())["tokenizer/steps"]
    assert tok_steps == (cfg.tokenizer.get("train_steps") or cfg.trainer.max_steps)
    assert json.loads((rl / "metrics.json").read_text())["rl/iterations"] == cfg.rl.ppo.iterations
