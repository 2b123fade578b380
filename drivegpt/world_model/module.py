"""LightningModule of the world model: a thin wrapper around ``WorldModel.compute_loss``
(token cross-entropy + lambda * class-balanced disengagement BCE (+ pose prior)); it owns the
training state (running positive rates, conditioning fit, condition dropout) and the optimiser.
The disengagement loss is class-balanced on the raw head; the model adds the training prior's
log-odds back (``WorldModel.dis_prior``, logit adjustment)."""

from __future__ import annotations

import math

import lightning as L
import torch

from drivegpt.trainable import EvalSums, cosine_lr, gather_rows, take_rows, valid_rows
from drivegpt.world_model.losses import unpack_batch
from drivegpt.world_model.model import WorldModel, WorldModelConfig
from drivegpt.world_model.metrics import disengage_metrics

class WorldModelModule(L.LightningModule):
    def __init__(self, model_config: dict, tokenizer_path: str | None = None, lr: float = 3e-4,
                 min_lr_ratio: float = 0.1, weight_decay: float = 0.1, betas=(0.9, 0.95),
                 warmup_steps: int = 100, max_steps: int = 1000, dis_weight: float = 1.0,
                 pose_weight: float = 0.1, rate_momentum: float = 0.99):
        super().__init__()
        self.save_hyperparameters()
        self.model = WorldModel(WorldModelConfig.from_dict(model_config), tokenizer_path=tokenizer_path)
        n_h, n_c = len(self.model.cfg.horizons), self.model.cfg.n_causes
        self.register_buffer("pos_rate", torch.full((n_h, n_c), -1.0))  # -1 = not seen yet
        self.register_buffer("pos_count", torch.zeros(n_h, n_c, dtype=torch.float64))
        self.register_buffer("label_count", torch.zeros(n_h, n_c, dtype=torch.float64))
        self._val = []
        self._sums = EvalSums(("tokens", "ce", "correct", "dis_labels", "dis", "pose_n", "pose"))

    # ------------------------------------------------------------------ losses
    def losses(self, batch: dict, train: bool) -> tuple[dict, dict]:
        """(named loss parts incl. "loss", forward outputs) through ``WorldModel.compute_loss``."""
        m, cfg, hp = self.model, self.model.cfg, self.hparams
        b = unpack_batch(batch)
        if train and not bool(m.cond_fitted):
            m.fit_conditioning(b["rel_pose"], b["speed"])
        drop = None
        if train and cfg.cond_drop > 0:
            # maskgit drops frames' moves independently (guidance then drops the commanded move
            # alone), the autoregressive model whole samples' (guidance drops every move)
            shape = b["tokens"].shape[:2] if cfg.decoding == "maskgit" else b["tokens"].shape[:1]
            drop = torch.rand(shape, device=self.device) < cfg.cond_drop
        if train and b["target"] is not None and hp.dis_weight > 0:
            mask = b["mask"]
            mask[:, 0] = 0  # frame 0 has no commanded move and no history
            self._update_rate(b["target"], mask)
        rate = self.pos_rate if bool((self.pos_rate >= 0).all()) else torch.full_like(self.pos_rate, 0.5)
        out: dict = {}
        _, parts = m.compute_loss(batch, dis_weight=hp.dis_weight, pose_weight=hp.pose_weight, pos_rate=rate,
                                  drop=drop, outputs=out)
        return parts, out

    @torch.no_grad()
    def _update_rate(self, target, mask):
        """Positive rate per (horizon, cause) over every training label seen so far (cumulative
        counts: rare events make a per-batch or moving-average rate noisy), and the model's
        prior log-odds from it."""
        self.label_count += mask.sum(dim=(0, 1)).to(self.label_count)
        self.pos_count += (target * mask).sum(dim=(0, 1)).to(self.pos_count)
        seen = self.label_count > 0
        rate = (self.pos_count / self.label_count.clamp_min(1)).to(self.pos_rate)
        self.pos_rate.copy_(torch.where(seen, rate, self.pos_rate))
        p = rate.clamp(1e-4, 1 - 1e-4)
        self.model.dis_prior.copy_(torch.where(seen, torch.log(p / (1 - p)), self.model.dis_prior))

    def training_step(self, batch, batch_idx):
        logs, _ = self.losses(batch, train=True)
        bs = batch["tokens"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        self.log("loss", logs["loss"], prog_bar=True, logger=False, batch_size=bs)
        return logs["loss"]

    def on_validation_epoch_start(self):
        self._sums.reset()
        self._val.clear()

    def validation_step(self, batch, batch_idx):
        """Sums over the batch's real rows (padding rows from several ranks are left out); the
        epoch's metrics are pooled over the whole held-out set in ``on_validation_epoch_end``."""
        n = batch["tokens"].shape[0]
        valid = valid_rows(batch, n)
        real = int(valid.sum())
        if real < n:
            batch = take_rows(batch, valid if real else torch.arange(n) == 0)  # all padding: one row, weight 0
        logs, out = self.losses(batch, train=False)
        w = float(real > 0)
        scored = out.get("masked")  # maskgit: the masked tokens are the predictions
        hit = out["logits"].argmax(-1) == out["target_tokens"]
        tokens = (out["target_tokens"].numel() if scored is None else scored.sum()) * w
        correct = (hit.sum() if scored is None else hit[scored].sum()) * w
        self._sums.add(tokens=tokens, ce=logs["loss_tokens"] * tokens, correct=correct)
        if "loss_disengage" in logs:
            labels = out["mask"].sum() * w
            self._sums.add(dis_labels=labels, dis=logs["loss_disengage"] * labels)
        if "loss_pose" in logs:
            self._sums.add(pose_n=out["pose"].numel() * w, pose=logs["loss_pose"] * out["pose"].numel() * w)
        if "mask" in out and real:
            self._val.append((torch.sigmoid(out["disengage"].float()).cpu(), out["target"].cpu(), out["mask"].cpu()))

    def on_validation_epoch_end(self):
        s = self._sums.reduce(self)
        hp = self.hparams
        logs = {}
        if s["tokens"] > 0:
            ce = s["ce"] / s["tokens"]
            logs.update({"loss_tokens": ce, "bits_per_token": ce / math.log(2.0), "top1": s["correct"] / s["tokens"]})
            loss = ce
            if s["dis_labels"] > 0 and hp.dis_weight > 0:
                logs["loss_disengage"] = s["dis"] / s["dis_labels"]
                loss += hp.dis_weight * logs["loss_disengage"]
            if s["pose_n"] > 0 and hp.pose_weight > 0:
                logs["loss_pose"] = s["pose"] / s["pose_n"]
                loss += hp.pose_weight * logs["loss_pose"]
            logs["loss"] = loss
        for k, v in logs.items():  # the same value on every rank: the whole held-out set's
            self.log(f"val/{k}", float(v), sync_dist=True)
        n_h, n_c = len(self.model.cfg.horizons), self.model.cfg.n_causes
        if self._val:
            probs, target, mask = (torch.cat([x.reshape(-1, n_h, n_c) for x in xs]) for xs in zip(*self._val))
        else:
            probs = target = mask = torch.zeros(0, n_h, n_c)
        self._val.clear()
        probs, target, mask = gather_rows(self, probs, target, mask)
        if probs.shape[0] == 0:
            return
        horizons = self.model.cfg.horizons
        res = disengage_metrics(probs, target, mask, horizons)
        for h in horizons:
            v = res.get(f"auroc_{h:g}s")
            if v is not None:
                self.log(f"val/auroc_{h:g}s", float(v), sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "emb" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # not fused: Lightning refuses to clip the gradients of a fused optimizer under mixed
        # precision (trainer.gradient_clip_val; the first H100 run stopped at step 0 on it)
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=False)
        self.schedule_steps = int(hp.max_steps)  # a time budget (drivegpt.training.StepBudget) may shorten it
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_lr(s, hp.warmup_steps, self.schedule_steps, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
