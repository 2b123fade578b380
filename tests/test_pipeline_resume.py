"""Reliability of the main job: kill `drivegpt pipeline` during shard writing (SIGKILL), tokenizer
training (SIGTERM) and RL (SIGKILL); re-running completes, no partial artefact is taken as
complete, each killed stage resumes from its checkpoint (not from scratch), and the outputs match
an uninterrupted run where the same seeds make them equal.

What equals an uninterrupted run, and what cannot:
- fleet shards: bit for bit (each shard is a pure function of its seeds);
- token shards: bit for bit the shards a fresh, uninterrupted ``drivegpt tokenize`` writes with the
  tokenizer the resumed run trained (tokenize is a pure function of frames and weights);
- the tokenizer's and the policy's weights: not equal, and not asserted equal. A resumed
  tokenizer restarts its streamed, shuffled epoch (webdataset has no mid-epoch position to
  restore), and RL re-seeds its environments with ``seed + start_iteration``, so the batches after
  the resume differ from an uninterrupted run's. What is guaranteed and asserted instead: SIGTERM
  writes ``last.ckpt`` at the step it stopped and exits with status 143; the re-run resumes from
  exactly that step (``tokenizer/resumed_from_step``) and from the iteration after the last saved
  RL state (``rl/resumed_from_iteration``), and trains to the full length.

The finished run's ``report.html`` is opened too: a section per stage, the scoreboard, every
inlined picture decodes.
"""

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from drivegpt.checkpoints import lightning_global_step

TINY = ["experiment=tiny", "logger=none"]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    log = open(run_dir.parent / f"attempt-{time.time_ns()}.log", "w+b")  # a file: a full pipe would block
    p = subprocess.Popen([sys.executable, "-m", "drivegpt", "pipeline", *TINY, f"run_dir={run_dir}", *extra],
                         stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)
    p.log = log
    return p


def err_of(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def kill_when(proc: subprocess.Popen, ready, sig, timeout=1800.0, group: bool = False) -> int:
    """Send ``sig`` once ``ready()`` (``group``: to the whole process group, DataLoader workers
    included, as a scheduler does); returns the time it was sent (ns). The timeout guards against a
    hang, not speed: on a 2-core machine at load ~10 the RL kill point came after 15 min."""
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}) before the kill point: {err_of(proc)[-3000:]}")
        assert time.time() - t0 < timeout, "kill point never reached"
        time.sleep(0.05)
    sent = time.time_ns()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=120)
    return sent


def manifest_digest(shard_dir: Path) -> list:
    m = json.loads((shard_dir / "manifest.json").read_text())
    return sorted((s["name"], s["sha256"], s["samples"]) for s in m["shards"])


def tar_digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.tar"))}


@pytest.mark.slow
def test_pipeline_survives_kills_and_matches_clean_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fleet, tok, tokens, rl = run / "01_fleet", run / "03_train_tokenizer", run / "05_tokenize", run / "09_rl"

    # 1) SIGKILL while the fleet's shards are being written (first shard landed, not all).
    p = start(run)
    kill_when(p, lambda: len(list((fleet / "shards").glob("*.tar"))) >= 1, signal.SIGKILL)
    assert not (fleet / "DONE").exists()

    # 2) SIGTERM to the whole process group (DataLoader workers too, as a scheduler sends it) during
    #    tokenizer training, once a periodic checkpoint exists: Lightning finishes the batch,
    #    last.ckpt is written at that step, the process exits cleanly with 143.
    p = start(run, "data.num_workers=1")
    sent = kill_when(p, lambda: any((tok / "checkpoints").glob("*.ckpt")) if (tok / "checkpoints").exists() else False,
                     signal.SIGTERM, group=True)
    err = err_of(p)
    assert p.returncode == 143, (p.returncode, err[-3000:])
    assert "SIGTERM: saved" in err and "stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    assert (fleet / "DONE").exists() and not (tok / "DONE").exists()
    last = tok / "checkpoints" / "last.ckpt"
    assert last.stat().st_mtime_ns >= sent  # written after the signal, not the periodic one
    stopped_at = lightning_global_step(last)
    from drivegpt.config import compose

    cfg = compose("train_policy", TINY)
    tok_total = cfg.tokenizer.get("train_steps") or cfg.trainer.max_steps
    assert 0 < stopped_at < tok_total

    # 3) SIGKILL during RL, once an iteration's state is saved.
    p = start(run)
    kill_when(p, lambda: (rl / "checkpoints" / "rl_state.pt").exists(), signal.SIGKILL)
    assert (tok / "DONE").exists() and not (rl / "DONE").exists()
    rl_saved = int(torch.load(rl / "checkpoints" / "rl_state.pt", weights_only=True)["iteration"])

    # 4) The re-run completes, each killed stage resuming where it stopped.
    p = start(run)
    p.wait(timeout=1800)
    assert p.returncode == 0, err_of(p)[-3000:]
    done = sorted(d.name for d in run.iterdir() if (d / "DONE").exists())
    assert len(done) == 12 and (run / "report.html").exists()
    summary = json.loads((run / "metrics.json").read_text())["stages"]
    assert summary["fleet"]["status"] == "cached" and summary["export"]["status"] == "ran"
    tok_m = json.loads((tok / "metrics.json").read_text())
    assert tok_m["tokenizer/resumed_from_step"] == stopped_at and tok_m["tokenizer/steps"] == tok_total
    rl_m = json.loads((rl / "metrics.json").read_text())
    assert rl_m["rl/resumed_from_iteration"] == rl_saved + 1 and rl_m["rl/iterations"] == cfg.rl.ppo.iterations

    # Outputs that the same seeds make equal match uninterrupted runs bit for bit.
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "drivegpt", "fleet", "generate", *TINY, f"run_dir={clean}",
                    f"out={clean}/shards"], check=True, capture_output=True)
    assert manifest_digest(fleet / "shards") == manifest_digest(clean / "shards")
    subprocess.run([sys.executable, "-m", "drivegpt", "tokenize", *TINY, f"run_dir={clean}/tokenize",
                    f"checkpoint={tok}", f"data.shards={clean}/shards", f"out={clean}/tokens"],
                   check=True, capture_output=True)
    got, want = tar_digests(tokens / "tokens"), tar_digests(clean / "tokens")
    assert got and got == want

    # The report of this real run: a section per stage, the scoreboard, pictures that decode.
    html = (run / "report.html").read_text()
    for name in done:
        assert f"id='{name}'" in html, name
    assert "<h2>Scoreboard (" in html and "<h2>Summary</h2>" in html
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) >= 5, len(pngs)
    for b64 in pngs:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 10 and img.shape[1] > 10
    fleet_km = json.loads((fleet / "metrics.json").read_text())["km"]
    assert f"km={fleet_km:.3g}" in html  # the fleet's headline, from this run's metrics
