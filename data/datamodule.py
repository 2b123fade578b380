"""``FleetDataModule``: Lightning wrapper around the frame / window pipelines (data.loaders).

    dm = FleetDataModule(cfg, kind="windows", key="tokens")   # cfg: a composed stage config
    trainer.fit(model, datamodule=dm)

Settings come from ``cfg.data`` (shards, batch_size, num_workers, shuffle_buffer, resampled,
epoch_samples, val_fraction, stride, context_frames, horizons, frame_height/width, ...).

What every rank gets (README "Scale-out"):

- Training on one process, or with ``data.resampled=false``: every training sample once per
  epoch, shuffled, split over ranks (wds.split_by_node) and workers (wds.split_by_worker).
  Several ranks then need equal batch counts, which uneven shards do not give.
- Training on several ranks (``data.resampled=auto``, the default, or ``true``): shards are
  resampled endlessly (a distinct deterministic sequence per rank and worker) and the epoch is
  a fixed number of batches per rank (``with_epoch`` on the loader): ``data.epoch_samples`` per
  rank, or by default the stage's whole step budget (max_steps x accumulate_grad_batches
  batches, so validation runs at the end of training and every ``trainer.val_check_interval``).
- Validation / evaluation: the held-out segments (data.loaders.split_of), every shard once,
  unshuffled; on several ranks every rank reads them all and takes every R-th item
  (``data.loaders.even_split``), padded to the same count with items flagged ``valid=False``,
  so every rank runs the same number of batches whatever the shard layout.
"""

from __future__ import annotations

import weakref

import lightning as L

from drivegpt.data.labels import DEFAULT_HORIZONS
from drivegpt.data.loaders import frame_dataset, make_loader, shutdown_workers, window_dataset

KINDS = ("frames", "windows")


def _world_size() -> int:
    import webdataset as wds

    return int(wds.utils.pytorch_worker_info()[1])


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
        self._loaders: weakref.WeakSet = weakref.WeakSet()  # the loaders made here (teardown ends their workers)

    # -- how the data is distributed -----------------------------------------------------------
    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else _world_size()

    def is_resampled(self, split: str = "train") -> bool:
        """``data.resampled``: true, false, or auto (= resampled training on several ranks)."""
        r = self.data.get("resampled", "auto")
        if split != "train":
            return False
        if r is None or str(r).lower() == "auto":
            return self.world_size() > 1
        if isinstance(r, str):
            if r.lower() not in ("true", "false"):
                raise ValueError(f"data.resampled must be true, false or auto, got {r!r}")
            return r.lower() == "true"
        return bool(r)

    def epoch_batches(self) -> int:
        """Batches per rank in one resampled epoch: ``data.epoch_samples`` / batch size, else the
        attached trainer's step budget (max_steps x accumulate_grad_batches)."""
        d = self.data
        if d.get("epoch_samples"):
            return max(1, int(d.epoch_samples) // int(d.batch_size))
        trainer = getattr(self, "trainer", None)
        steps = int(trainer.max_steps) if trainer is not None and trainer.max_steps else -1
        if steps <= 0:
            raise ValueError("resampled training (data.resampled=true, or auto on several ranks) needs "
                             "data.epoch_samples (samples per epoch per rank) or a step budget (max_steps)")
        return steps * int(getattr(trainer, "accumulate_grad_batches", 1) or 1)

    # -- datasets and loaders ------------------------------------------------------------------
    def dataset(self, split: str = "train", shuffle: bool | None = None, resampled: bool | None = None):
        d = self.data
        shuffle = (split == "train") if shuffle is None else shuffle
        resampled = self.is_resampled(split) if resampled is None else resampled
        even = split != "train" and not resampled and self.world_size() > 1
        size = (int(d.frame_height), int(d.frame_width)) if d.get("resize", True) else None
        common = dict(split=split, val_fraction=float(d.val_fraction),
                      shuffle_buffer=int(d.shuffle_buffer) if shuffle else 0, resampled=resampled,
                      skip_bad=bool(d.get("skip_bad", False)), seed=int(self.cfg.get("seed", 0)),
                      stats=self.stats, even=even)
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
        is_resampled = self.is_resampled(split) if resampled is None else resampled
        nbatches = self.epoch_batches() if is_resampled else None
        ds = self.dataset(split, **kw)
        loader = make_loader(ds, int(d.batch_size), int(d.num_workers),
                             epoch_samples=None if nbatches is None else nbatches * int(d.batch_size))
        self._loaders.add(loader)
        return loader

    def train_dataloader(self):
        return self.dataloader("train")

    def val_dataloader(self):
        return self.dataloader("val")

    def predict_dataloader(self):
        return self.dataloader("all", shuffle=False, resampled=False)

    def __getstate__(self) -> dict:  # DDP spawn pickles the module: the loaders stay with their process
        state = dict(self.__dict__)
        state["_loaders"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._loaders = weakref.WeakSet()

    def teardown(self, stage: str) -> None:
        """This module's loaders' persistent workers end with the fit/validate/predict
        (``drivegpt.data.loaders.shutdown_workers``)."""
        shutdown_workers(list(self._loaders))
