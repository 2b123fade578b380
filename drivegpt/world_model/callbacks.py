"""Training callback: decoded sample rollouts (real | predicted) after each validation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from drivegpt.runs import write_png
from drivegpt.tokenizer import load_tokenizer
from drivegpt.world_model.sampling import step

log = logging.getLogger(__name__)


def load_tokenizer_or_none(path):
    if not path:
        return None
    try:
        return load_tokenizer(path)
    except Exception as e:  # the tokenizer is optional for training
        log.warning("world model: no decoded samples (tokenizer %s: %s)", path, e)
        return None


class SampleRollouts(Callback):
    """Greedy next frame for the last frame of a few validation windows, decoded side by side."""

    def __init__(self, out_dir: str | Path, tokenizer_path: str | None, n: int = 2):
        self.out_dir, self.tokenizer_path, self.n = Path(out_dir), tokenizer_path, n
        self._batch = None
        self._tok = None
        self._tried = False

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self._batch is None and self.n > 0:
            self._batch = {k: v[: self.n] for k, v in batch.items() if k in ("tokens", "rel_pose", "speed")}

    def on_validation_epoch_end(self, trainer, pl_module):
        if self._batch is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not self._tried:
            self._tried, self._tok = True, load_tokenizer_or_none(self.tokenizer_path)
        if self._tok is None:
            return

        model = pl_module.model
        was = model.training
        model.eval()
        b = self._batch
        ctx = b["tokens"][:, :-1].long()
        pred, _ = step(model, ctx, b["rel_pose"][:, :-1], b["speed"][:, :-1], temperature=0.0)
        model.train(was)
        real = self._tok.decode(b["tokens"][:, -1].long().cpu())
        fake = self._tok.decode(pred.cpu())
        real, fake = (np.asarray(x.cpu() if torch.is_tensor(x) else x) for x in (real, fake))
        rows = [np.concatenate([r, np.full_like(r[:, :2], 255), f], axis=1) for r, f in zip(real, fake)]
        img = np.concatenate(rows, axis=0)
        path = write_png(self.out_dir / f"step_{trainer.global_step:07d}.png", img)
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image("samples/real_vs_predicted", [img], step=trainer.global_step)
        log.info("world model: samples -> %s", path)
