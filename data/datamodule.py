"""``FleetDataModule``: Lightning wrapper around the frame / window pipelines (data.loaders).

    dm = FleetDataModule(cfg, kind="windows", key="tokens")   # cfg: a composed stage config
    trainer.fit(model, datamodule=dm)

Settings come from ``cfg.data`` (shards, batch_size, num_workers, shuffle_buffer, resampled,
epoch_samples, val_fraction, stride, context_frames, horizons, frame_height/width, ...).
Training data: shuffled, split over ranks (wds.split_by_node) and workers
(wds.split_by_worker); with ``data.resampled=true`` (multi-node) shards are resampled
endlessly and the epoch is ``data.epoch_samples`` per rank (``with_epoch`` on the loader).
Validation: the held-out segments (data.loaders.split_of), every shard once, unshuffled.
"""

from __future__ import annotations

import lightning as L

from drivegpt.data.labels import DEFAULT_HORIZONS
from drivegpt.data.loaders import frame_dataset, make_loader, window_dataset

KINDS = ("frames", "windows")


class FleetDataModule(L.LightningDataModule):
    def __init__(self, cfg, kind: str = "frames", key: str = "frames", shards=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if key not in ("frames", "tokens"):
            raise ValueError(f"key must be 'frames' or 'tokens', got {key!r}")
        self.cfg, self.kind, self.key = cfg, kind, key
        self.data = cfg.data
        self.shards = shards if shards is not None else self.data.shards
        self.stats: dict = {}  # skipped-sample counts (main-process loading only)

    def dataset(self, split: str = "train", shuffle: bool | None = None, resampled: bool | None = None):
        d = self.data
        shuffle = (split == "train") if shuffle is None else shuffle
        resampled = bool(d.get("resampled", False)) and split == "train" if resampled is None else resampled
        size = (int(d.frame_height), int(d.frame_width)) if d.get("resize", True) else None
        common = dict(split=split, val_fraction=float(d.val_fraction),
                      shuffle_buffer=int(d.shuffle_buffer) if shuffle else 0, resampled=resampled,
                      skip_bad=bool(d.get("skip_bad", False)), seed=int(self.cfg.get("seed", 0)),
                      stats=self.stats)
        if self.kind == "frames":
            return frame_dataset(self.shards, frames_per_segment=d.get("frames_per_segment"),
                                 size=size, **common)
        return window_dataset(self.shards, int(d.context_frames), int(d.stride), key=self.key,
                              horizons=tuple(d.get("horizons") or DEFAULT_HORIZONS),
                              window_step=d.get("window_step"),
                              windows_per_segment=d.get("windows_per_segment"),
                              size=size if self.key == "frames" else None, **common)

    def dataloader(self, split: str = "train", **kw):
        d = self.data
        resampled = kw.get("resampled")
        ds = self.dataset(split, **kw)
        is_resampled = bool(d.get("resampled", False)) and split == "train" if resampled is None else resampled
        epoch = d.get("epoch_samples") if is_resampled else None
        if is_resampled and not epoch:
            raise ValueError("data.resampled=true needs data.epoch_samples (samples per epoch per rank)")
        return make_loader(ds, int(d.batch_size), int(d.num_workers), epoch_samples=epoch)

    def train_dataloader(self):
        return self.dataloader("train")

    def val_dataloader(self):
        return self.dataloader("val")

    def predict_dataloader(self):
        return self.dataloader("all", shuffle=False, resampled=False)
