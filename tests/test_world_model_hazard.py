"""The disengagement head's recent-motion input and its refit after training
(drivegpt/world_model/hazard.py)."""

import pytest
import torch

from drivegpt.world_model.hazard import hazard_inputs, ranking_score, refit_hazard_head
from drivegpt.world_model.model import WorldModel, WorldModelConfig

GRID, V, K = (2, 3), 16, 5


def tiny(**kw) -> WorldModel:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, grid=GRID, max_frames=K, n_layer=1, n_head=2, n_embd=16, dis_cond=True)
    cfg.update(kw)
    return WorldModel(WorldModelConfig(**cfg)).eval()


def moves(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, K, 6, generator=g), 10 + 5 * torch.rand(b, K, generator=g)


def test_hazard_features_stack_the_recent_moves_newest_first():
    model = tiny(dis_history=2)
    pose, speed = moves(3, 0)
    f = model.frame_features(pose, speed, K)
    h = model.hazard_features(pose, speed, K)
    assert h.shape == (3, K, 7 * 3)
    for k in range(K):
        for j in range(3):
            want = f[:, k - j] if k - j >= 0 else torch.zeros_like(f[:, 0])
            torch.testing.assert_close(h[:, k, 7 * j: 7 * (j + 1)], want)
    # frame k's slot 0 is the move into k (rel_pose[k-1]): changing rel_pose[2] changes frames 3 and 4 only
    pose2 = pose.clone()
    pose2[:, 2] += 1.0
    diff = (model.hazard_features(pose2, speed, K) - h).abs().amax(dim=(0, 2))
    assert diff[:3].max() == 0 and diff[3:].min() > 0


def test_a_moves_only_head_ignores_the_frames_and_reads_the_moves():
    model = tiny(dis_history=1, dis_start=False)
    pose, speed = moves(4, 1)
    tok = torch.randint(0, V, (4, K, *GRID))
    a = model(tok, pose, speed)["disengage"]
    b = model(torch.randint(0, V, (4, K, *GRID)), pose, speed)["disengage"]
    torch.testing.assert_close(a, b)  # the frames do not matter
    pose2 = pose.clone()
    pose2[:, 1, 5] += 2.0
    c = model(tok, pose2, speed)["disengage"]
    assert (c[:, 2] - a[:, 2]).abs().max() > 1e-4  # the move into frame 2 does
    with pytest.raises(ValueError, match="dis_start=False needs dis_cond"):
        WorldModelConfig(vocab_size=V, grid=GRID, max_frames=K, dis_start=False, dis_cond=False)


def planted(n_windows, seed, model):
    """hazard_inputs-style rows from random windows: STEER (every horizon) iff the yaw of the move
    two frames back was large (a signal only the motion history holds), BRAKE pure noise."""
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(n_windows, K, 6, generator=g)
    speed = 10 + 5 * torch.rand(n_windows, K, generator=g)
    feats = model.hazard_features(pose, speed, K)[:, 1:].flatten(0, 1)
    n = feats.shape[0]
    yaw_back = torch.cat([torch.zeros(n_windows, 2), pose[:, :-2, 5]], 1)[:, 1:].flatten()  # rel_pose[k-2]
    target = torch.zeros(n, 4, 3)
    target[:, :, 0] = (yaw_back > 1.0).float()[:, None]
    target[:, :, 1] = (torch.rand(n, 4, generator=g) < 0.1).float()
    return dict(start=torch.randn(n, model.cfg.n_embd, generator=g), feats=feats, target=target,
                mask=torch.ones(n, 4, 3), segment=[f"seg{(i // (K - 1)) % 12}" for i in range(n)])


def test_refit_learns_the_hazard_from_the_recent_moves_and_can_keep_a_better_joint_head():
    model = tiny(dis_history=2, dis_start=False)
    train, test = planted(600, 0, model), planted(300, 1, model)

    def steer_auroc():
        with torch.no_grad():
            logits = model.disengage_logits(test["start"], test["feats"])
        return ranking_score(logits[:, :, :1], test["target"][:, :, :1], test["mask"][:, :, :1])[0]

    before = steer_auroc()
    report = refit_hazard_head(model, train, steps=200, lr=1e-2, weight_decays=(0.01,))
    after = steer_auroc()
    assert report["replaced"] and report["aside_segments"] == 3 and report["segments"] == 12
    assert report["aside_score_refit"] > report["aside_score_joint"]
    assert abs(before - 0.5) < 0.15 and after > 0.9, (before, after)
    # a second refit given one step cannot beat the head it would replace: the head is kept
    state = {k: v.clone() for k, v in model.dis_head.state_dict().items()}
    again = refit_hazard_head(model, train, steps=1, weight_decays=(0.01,), keep_joint=True)
    assert not again["replaced"] and again["aside_score_joint"] > again["aside_score_refit"]
    for k, v in model.dis_head.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_hazard_inputs_collects_frames_after_the_first_and_the_refit_refuses_bad_settings():
    model = tiny(dis_history=1, dis_start=False)
    pose, speed = moves(6, 2)
    batch = {"tokens": torch.randint(0, V, (6, K, *GRID)), "rel_pose": pose, "speed": speed,
             "targets": torch.zeros(6, K, 4, 3), "mask": torch.ones(6, K, 4, 3),
             "segment_id": [f"s{i}" for i in range(6)]}
    data = hazard_inputs(model, [batch, batch])
    assert data["feats"].shape == (2 * 6 * (K - 1), 14) and data["start"].shape[1] == 16
    assert data["segment"][: K - 1] == ["s0"] * (K - 1) and data["segment"][K - 1] == "s1"
    torch.testing.assert_close(data["feats"][: K - 1], model.hazard_features(pose, speed, K)[0, 1:])
    assert hazard_inputs(model, [{k: v for k, v in batch.items() if k not in ("targets", "mask")}]) is None
    with pytest.raises(ValueError, match="steps"):
        refit_hazard_head(model, data, steps=0)
    with pytest.raises(ValueError, match="aside_fraction"):
        refit_hazard_head(model, data, aside_fraction=1.0)
    one = dict(data, segment=["s0"] * len(data["segment"]))
    assert refit_hazard_head(model, one)["reason"].startswith("fewer than two")
