"""LightningModule that trains the tokenizer: ``Tokenizer.compute_loss`` (reconstruction +
commitment) [+ patch-GAN, whose discriminator lives here].

Manual optimization: the generator (encoder/decoder/FSQ projections) and, when the GAN term
is on, the discriminator each get an Adam step per batch; ``trainer.global_step`` counts
batches (the discriminator's step bypasses Lightning's step counter). Gradients are clipped
here with ``trainer.gradient_clip_val`` from the config (Lightning's automatic clipping does
not apply to manual optimization).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from drivegpt.trainable import EvalSums, cosine_lr, valid_rows
from drivegpt.tokenizer.losses import PatchDiscriminator, hinge_d_loss, psnr
from drivegpt.tokenizer.model import Tokenizer, to_float, tokenizer_config


def batch_frames(batch: Any) -> torch.Tensor:
    """uint8 frames [b, h, w, 3] from a loader batch (a tensor, or a dict with ``frame`` as
    data.loaders.frame_dataset yields, or ``frames``)."""
    if isinstance(batch, dict):
        for key in ("frame", "frames"):
            if key in batch:
                return batch[key]
        raise KeyError(f"tokenizer: batch has keys {sorted(batch)} but no 'frame' (uint8 [b,h,w,3])")
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


class TokenizerModule(L.LightningModule):
    def __init__(self, tokenizer_cfg: DictConfig | dict, clip_val: float | None = 1.0):
        super().__init__()
        self.automatic_optimization = False
        tcfg = tokenizer_config(tokenizer_cfg)
        self.save_hyperparameters({"tokenizer_config": tcfg, "clip_val": clip_val})
        self.model = Tokenizer(tcfg)
        c = self.model.cfg
        self.gan_weight = float(c.loss.gan)
        self.gan_start = int(c.loss.gan_start)
        self.disc = PatchDiscriminator(int(c.loss.disc_channels), int(c.loss.disc_layers)) if self.gan_weight > 0 else None
        self.clip_val = clip_val
        self.register_buffer("usage_counts", torch.zeros(self.model.vocab_size), persistent=False)
        self._sums = EvalSums(("frames", "psnr", "mse"))

    # -- helpers ------------------------------------------------------------------------------
    def frames_in(self, batch) -> torch.Tensor:
        frames = self.model.check_frames(batch_frames(batch), "tokenizer training batch 'frames'")
        return to_float(frames.to(self.device))

    def gan_active(self) -> bool:
        return self.disc is not None and self.global_step >= self.gan_start

    def _clip(self, opt) -> None:
        if self.clip_val:
            self.clip_gradients(opt, gradient_clip_val=float(self.clip_val), gradient_clip_algorithm="norm")

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        opt_g, opt_d = (opts if isinstance(opts, (list, tuple)) else (opts, None))
        sched = self.lr_schedulers()
        x = self.frames_in(batch)  # [b, 3, h, w] in [-1, 1]
        out: dict = {}
        loss, parts = self.model.compute_loss(x, outputs=out)
        recon, indices, q_loss = out["recon"], out["indices"], parts["commit"]
        if self.gan_active():
            g_adv = -self.disc(recon).mean()
            loss = loss + self.gan_weight * g_adv
            self.log("train/g_adv", g_adv)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self._clip(opt_g)
        opt_g.step()
        if sched is not None:
            sched.step()
        if self.gan_active() and opt_d is not None:
            d_loss = hinge_d_loss(self.disc(x), self.disc(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.optimizer.step()  # raw step: global_step keeps counting batches, not optimizers
            self.log("train/d_loss", d_loss)

        with torch.no_grad():
            counts = torch.bincount(indices.flatten(), minlength=self.model.vocab_size).float()
            self.usage_counts += counts
            p = counts / counts.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
            self.log_dict({
                "train/loss": loss.detach(), "train/l1": parts["l1"].detach(), "train/mse": parts["mse"].detach(),
                "train/commit": q_loss.detach(), "train/psnr": psnr(recon.detach(), x).mean(),
                "train/perplexity": perplexity, "train/usage": (counts > 0).float().mean(),
            }, prog_bar=False)
            self.log("psnr", psnr(recon.detach(), x).mean(), prog_bar=True, logger=False)
        return loss.detach()

    def on_validation_epoch_start(self):
        self._sums.reset()

    def validation_step(self, batch, batch_idx):
        """Sums over the batch's real frames (padding rows from several ranks are left out)."""
        x = self.frames_in(batch)
        valid = valid_rows(batch, x.shape[0], x.device)
        recon, indices, q_loss = self.model(x)
        err = (recon.float() - x).pow(2).mean(dim=(1, 2, 3))  # per frame
        self._sums.add(frames=valid.sum(), psnr=psnr(recon, x)[valid], mse=err[valid])

    def on_validation_epoch_end(self):
        """PSNR (mean over frames) and MSE of the whole held-out set: the same on any number of
        ranks (every rank logs the pooled value)."""
        s = self._sums.reduce(self)
        if s["frames"] > 0:
            self.log_dict({"val/psnr": s["psnr"] / s["frames"], "val/mse": s["mse"] / s["frames"]}, sync_dist=True)

    # -- optimizers ---------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.model.cfg.optim
        opt_g = torch.optim.Adam(self.model.parameters(), lr=float(o.lr), betas=tuple(o.betas),
                                 weight_decay=float(o.weight_decay))
        warm, floor = max(1, int(o.warmup_steps)), float(o.get("min_lr_ratio", 1.0))
        self.schedule_steps = int(self.trainer.max_steps) if self._trainer is not None and self.trainer.max_steps > 0 else 0
        # warm-up, then a cosine to lr * min_lr_ratio at the stage's last step (1.0: constant); a
        # time budget (drivegpt.training.StepBudget) may shorten schedule_steps once, early
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt_g, lambda s: cosine_lr(s, warm, self.schedule_steps, floor) if self.schedule_steps > warm
            else min(1.0, (s + 1) / warm))
        g = {"optimizer": opt_g, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.disc is None:
            return g
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=float(o.disc_lr), betas=tuple(o.betas))
        return [g, {"optimizer": opt_d}]
