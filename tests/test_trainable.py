"""Every trainable component keeps one contract: compute_loss(batch) -> (loss, named parts)."""

import torch

from drivegpt.config import compose
from drivegpt.rl.policy import Policy, PolicyConfig
from drivegpt.tokenizer import Tokenizer
from drivegpt.tokenizer.model import to_float
from drivegpt.trainable import Trainable
from drivegpt.world_model import WorldModel, WorldModelConfig


def check(model, batch, **kw):
    assert isinstance(model, Trainable)
    loss, parts = model.compute_loss(batch, **kw)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(parts["loss"], loss) and all(torch.is_tensor(v) for v in parts.values())
    loss.backward()
    assert any(p.grad is not None for p in model.parameters())
    return parts


def test_world_model_tokenizer_and_policy_share_the_contract():
    torch.manual_seed(0)
    wm = WorldModel(WorldModelConfig(vocab_size=16, grid=[2, 4], n_layer=1, n_head=2, n_embd=16, max_frames=3))
    b, k = 2, 3
    batch = {"tokens": torch.randint(0, 16, (b, k, 2, 4)), "rel_pose": torch.randn(b, k, 6) * 0.1,
             "speed": torch.rand(b, k) * 10, "targets": torch.zeros(b, k, len(wm.cfg.horizons), 3)}
    parts = check(wm, batch)
    assert {"loss_tokens", "bits_per_token", "loss_disengage"} <= set(parts)

    cfg = compose("train_tokenizer", ["experiment=tiny"]).tokenizer
    tok = Tokenizer(cfg)
    frames = torch.randint(0, 255, (2, *tok.frame_size, 3), dtype=torch.uint8)
    parts = check(tok, to_float(frames))
    assert {"rec", "l1", "mse", "commit"} <= set(parts)

    pol = Policy(PolicyConfig.from_dict({"context_frames": 2, "channels": [8, 16], "frame_height": 32,
                                         "frame_width": 64}))
    batch = {"frames": torch.randint(0, 255, (3, 2, 32, 64, 3), dtype=torch.uint8), "speed": torch.rand(3) * 20,
             "target": torch.rand(3, 2) * 2 - 1, "weight": torch.ones(3)}
    parts = check(pol, batch)
    assert {"action_mse", "log_std_prior"} <= set(parts)


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    from drivegpt.trainable import cosine_lr

    lrs = [cosine_lr(s, 4, 20, 0.1) for s in range(25)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # non-increasing after warm-up
    assert abs(lrs[20] - 0.1) < 1e-9 and lrs[24] == lrs[20]  # held at the floor after the last step


def test_tokenizer_lr_follows_the_stage_length():
    """tokenizer.optim.min_lr_ratio < 1: the generator's lr decays to lr x ratio at the stage's
    last step (trainer.max_steps); 1.0 keeps it constant after the warm-up."""
    import lightning as L

    from drivegpt.tokenizer.module import TokenizerModule

    def lrs_after(ratio):
        cfg = compose("train_tokenizer", ["experiment=tiny", f"tokenizer.optim.min_lr_ratio={ratio}",
                                          "tokenizer.optim.warmup_steps=2", "tokenizer.optim.lr=1e-3"]).tokenizer
        module = TokenizerModule(cfg)
        module.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                                   enable_progress_bar=False, enable_model_summary=False)
        sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(10):
            out.append(sched.optimizer.param_groups[0]["lr"])
            sched.optimizer.step()
            sched.step()
        out.append(sched.optimizer.param_groups[0]["lr"])
        return out

    decayed, constant = lrs_after(0.1), lrs_after(1.0)
    assert abs(decayed[-1] - 1e-4) < 1e-9 and decayed[2] == 1e-3
    assert constant[2:] == [1e-3] * 9
