"""StepBudget: a stage's length in seconds as well as steps (drivegpt.training)."""

import time

import lightning as L
import pytest
import torch
from torch import nn

from drivegpt.trainable import cosine_lr
from drivegpt.training import StepBudget


class SlowRegression(L.LightningModule):
    """y = 3x fitted by one weight; each step sleeps ``delay`` s (a slow machine); the lr follows
    a cosine over ``schedule_steps``, as the tokenizer's and the world model's do."""

    def __init__(self, delay: float, max_steps: int, slower_after: int | None = None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.delay, self.schedule_steps, self.slower_after = delay, max_steps, slower_after
        self.lrs: list[float] = []

    def on_train_start(self):
        self.t_start = time.perf_counter()  # what the budget counts: training, not the Trainer's set-up

    def on_train_end(self):
        self.t_end = time.perf_counter()

    def training_step(self, batch, batch_idx):
        slow = self.slower_after is not None and self.global_step >= self.slower_after
        time.sleep(self.delay * (2 if slow else 1))
        self.lrs.append(self.optimizers().param_groups[0]["lr"])
        x = batch[0]
        return ((self.w * x - 3 * x) ** 2).mean()

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, 2, self.schedule_steps, 0.0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        x = torch.randn(4096, 1)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)


def _fit(tmp_path, delay, max_steps, seconds, slower_after=None):
    module = SlowRegression(delay, max_steps, slower_after)
    budget = StepBudget(seconds, start=2, measure=5)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[budget], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module)
    return module, trainer, budget, module.t_end - module.t_start


def test_a_slow_machine_trains_fewer_steps_with_the_schedule_compressed(tmp_path):
    # 20 ms steps, 300 asked (6 s), 1.5 s allowed: about 70 steps, and the lr still reaches its floor
    module, trainer, budget, wall = _fit(tmp_path, 0.02, 300, 1.5)
    assert budget.report["bound"] == "time" and budget.report["max_steps"] == 300
    assert 30 <= trainer.global_step <= 90, trainer.global_step
    assert trainer.global_step == budget.report["steps"] == module.schedule_steps
    assert wall < 1.5 + 0.3, wall
    assert module.lrs[-1] < 0.05 * module.lrs[3]  # the cosine ran to (near) its end, not cut mid-way
    assert abs(module.w.item() - 3.0) < 0.5  # and it learnt


def test_a_fast_machine_trains_every_step_as_without_a_budget(tmp_path):
    module, trainer, budget, _ = _fit(tmp_path, 0.0, 60, 30.0)
    assert budget.report["bound"] == "steps" and trainer.global_step == 60 == module.schedule_steps


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="seconds"):
        StepBudget(0)


def test_the_count_is_revised_half_way_when_the_steps_slow_down(tmp_path):
    # timed at 20 ms, then 40 ms from step 30: the first count (~70) would take ~2.3 s of a 1.5 s
    # budget; the half-way revision cuts it
    module, trainer, budget, wall = _fit(tmp_path, 0.02, 300, 1.5, slower_after=30)
    r = budget.report
    assert r["revised"] and r["steps"] < r["first_steps"], r
    assert trainer.global_step == r["steps"] == module.schedule_steps
    # one revision, on a pace that still mixes fast and slow steps, leaves a small overrun (1.83 s
    # measured under the full suite's load); the first count alone would have run ~2.3 s
    assert wall < 1.5 + 0.6, wall
