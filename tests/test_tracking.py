import cv2
import numpy as np

from drivegpt.config import compose
from drivegpt.tracking import log_stage, start, wandb_mode


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    cfg = compose("data_inspect", ["shards=x"])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(cfg.logger) == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert wandb_mode(cfg.logger) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(cfg.logger) == "disabled"
    assert start(cfg, tmp_path, "x") is None


def test_log_stage_offline_writes_media(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose("data_inspect", ["shards=x", f"run_dir={tmp_path}"])
    cv2.imwrite(str(tmp_path / "sheet.png"), np.zeros((8, 8, 3), np.uint8))
    log_stage(cfg, tmp_path, "inspect", {"km": 1.5}, images={"sheet": tmp_path / "sheet.png"},
              tables={"scores": [{"policy": "rl", "km": 1.0}]})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = {p.parent.name for p in (runs[0] / "files" / "media").rglob("*") if p.is_file()}
    assert media == {"images", "table"}
