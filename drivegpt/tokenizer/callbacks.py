"""Training callbacks of the tokenizer: reconstruction grids and codebook usage."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from drivegpt.tokenizer.images import recon_grid, save_png, upscale_for, usage_plot
from drivegpt.tokenizer.module import TokenizerModule, batch_frames


class ReconImages(L.Callback):
    """Every ``every`` steps (and at the end): real | recon | error grid and the codebook-usage
    histogram, to the loggers (wandb images/histograms) and as PNGs in run_dir."""

    def __init__(self, run_dir: str | Path, every: int):
        self.run_dir, self.every = Path(run_dir), max(1, int(every))
        self.sample: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.sample is None:
            self.sample = batch_frames(batch)[:8].detach().cpu()
        if trainer.global_step % self.every == 0:
            self.emit(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.sample is not None:
            self.emit(trainer, pl_module)

    @torch.no_grad()
    def emit(self, trainer, pl_module: TokenizerModule):
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        _, recon = model.reconstruct(self.sample.to(pl_module.device))
        model.train(was_training)
        grid = recon_grid(self.sample.numpy(), recon.cpu().numpy())
        save_png(self.run_dir / "recon_grid.png", grid, scale=upscale_for(self.sample.shape[1]))
        counts = pl_module.usage_counts.detach().cpu().numpy()
        usage_plot(counts, self.run_dir / "codebook_usage.png", f"step {trainer.global_step}")
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):  # wandb
                try:
                    import wandb

                    logger.log_image("recon/real|recon|error", [grid], step=trainer.global_step)
                    exp.log({"codebook/usage_hist": wandb.Histogram(np_histogram=_hist(counts)),
                             "codebook/used_frac": float((counts > 0).mean())})
                except Exception:  # noqa: BLE001 - images are a convenience, never fatal
                    pass
            elif exp is not None and hasattr(exp, "add_image"):  # tensorboard
                exp.add_image("recon", grid, trainer.global_step, dataformats="HWC")
                exp.add_histogram("codebook_usage", counts, trainer.global_step)


def _hist(counts: np.ndarray):
    """(values, edges) of the per-code counts, for wandb.Histogram(np_histogram=...)."""
    return np.histogram(counts, bins=min(64, max(1, len(counts))))
