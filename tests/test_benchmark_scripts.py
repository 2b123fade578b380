"""The benchmarks measure what the README says they do (issue 16): the world-model speed script
builds the model its flags name and times whole frames both ways; the tokenizer speed script
leaves the caller's model alone; the pipeline benchmark reports only the stages its run executed."""

import importlib.util
from pathlib import Path

import pytest
import torch

from drivegpt.config import compose
from drivegpt.tokenizer import Tokenizer


def _load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_world_model_speed_flags_pick_the_model_and_both_sides_make_whole_frames():
    wms = _load("world_model_speed")
    n = torch.get_num_threads()
    try:
        res = wms.main(["--size", "tiny", "--layers", "1", "--heads", "2", "--width", "16", "--grid", "2x3",
                        "--vocab", "32", "--context", "2", "--batch", "2", "--rounds", "2", "--no-train",
                        "--threads", "1"])
    finally:
        torch.set_num_threads(n)
    assert (res["layers"], res["heads"], res["width"], res["grid"], res["vocab"]) == (1, 2, 16, [2, 3], 32)
    assert res["tokens_per_frame"] == 6 and res["context_frames"] == 2
    assert len(res["rollout_cpu_s_kv"]) == len(res["rollout_cpu_s_full"]) == 2  # interleaved rounds, each timed
    assert res["tokens_agree"] == 1.0  # greedy cached == greedy full recomputation, every token of the frame
    assert res["kv_speedup"] > 0 and res["kv_speedup_basis"] == "cpu_time"


def test_tokenizer_speed_leaves_the_shared_model_as_it_was():
    ts = _load("tokenizer_speed")
    torch.manual_seed(0)
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frames = torch.randint(0, 256, (2, *model.frame_size, 3), dtype=torch.uint8)
    ts.bench(model, frames, "cpu", True, False, 1)  # the optimized path converts its copy to channels_last
    for k, v in model.state_dict().items():
        assert v.is_contiguous(), f"{k} was converted in place"  # channels_last 4-D weights are not
        assert torch.equal(v, before[k])
    assert any(v.dim() == 4 and v.shape[1] > 1 for v in model.state_dict().values())  # the check can bite


def test_pipeline_benchmark_reports_only_what_its_run_did():
    pb = _load("pipeline")
    metrics = {"stages": {"fleet": {"seconds": 12.0, "status": "cached"},
                          "train_tokenizer": {"seconds": 113.0, "status": "cached"},
                          "rl": {"seconds": 40.5, "status": "ran"}, "export": {"seconds": 17.0, "status": "ran"}}}
    ran, cached = pb.split_stages(metrics)
    assert ran == {"rl": 40.5, "export": 17.0} and cached == ["fleet", "train_tokenizer"]
    assert pb.split_stages({}) == ({}, [])


@pytest.mark.parametrize("decoding", ["ar", "maskgit"])
def test_world_model_pose_scores_each_move_variant_on_the_same_windows(decoding):
    """A model with no path from the move to its tokens costs exactly 0 under every variant; once
    the move reaches the tokens, mirroring it changes the bits (the variants are really applied).
    A maskgit model's frame is scored predicted whole from the frames before it."""
    from drivegpt.world_model.model import WorldModel, WorldModelConfig

    wmp = _load("world_model_pose")
    torch.manual_seed(0)
    m = WorldModel(WorldModelConfig(vocab_size=16, grid=(2, 3), max_frames=3, n_layer=1, n_head=2, n_embd=16,
                                    decoding=decoding)).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"tokens": torch.randint(0, 16, (4, 3, 2, 3), generator=g), "rel_pose": torch.randn(4, 3, 6, generator=g),
                "speed": torch.rand(4, 3, generator=g) * 20} for _ in range(2)]
    with torch.no_grad():
        m.cond_mlp[-1].weight.zero_()
        m.cond_mlp[-1].bias.zero_()
        m.null_cond.zero_()
    res = wmp.pose_usage(m, batches, max_batches=10)
    assert res["windows"] == 8 and len(res["bits_per_token"]["logged"]) == 3
    assert res["mirrored_cost"] == res["shuffled_cost"] == res["null_cost"] == 0.0
    logged = res["bits_per_token"]["logged"]
    assert abs(res["history_gain"] - (logged[0] - sum(logged[1:]) / 2)) < 1e-3  # the per-frame bits are rounded
    with torch.no_grad():
        m.cond_mlp[-1].weight.normal_(0.0, 0.5)
    assert wmp.pose_usage(m, batches, max_batches=10)["mirrored_cost"] != 0.0
    if decoding == "maskgit":  # a frame is scored from the frames before it, not from its own tokens
        b = batches[0]
        target = b["tokens"].flatten(2)
        changed = b["tokens"].clone()
        changed[:, 1] = (changed[:, 1] + 1) % 16
        a = wmp.token_nll(m, b["tokens"], b["rel_pose"], b["speed"], None, target)
        c = wmp.token_nll(m, changed, b["rel_pose"], b["speed"], None, target)
        torch.testing.assert_close(a[:, :2], c[:, :2])
        assert not torch.allclose(a[:, 2], c[:, 2])  # frame 2 reads frame 1


def test_parallel_decoding_benchmark_shares_the_context_pass_under_guidance():
    """Guidance doubles an autoregressive step's FLOPs (every move dropped: the whole batch twice)
    but not a parallel step's (the commanded move alone: the context pass is shared)."""
    pd = _load("parallel_decoding")
    n = torch.get_num_threads()
    try:
        res = pd.main(["--size", "tiny", "--batches", "2", "--steps", "2", "--rounds", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(n)
    f = res["gflop_per_env_step"]
    assert f["ar_cfg3"] > 1.9 * f["ar_cfg1"]
    assert f["parallel2_cfg1"] < f["parallel2_cfg3"] < 1.9 * f["parallel2_cfg1"]
    (row,) = res["batches"]
    assert row["batch"] == 2 and set(row["env_steps_per_s"]) == {"ar_cfg1", "ar_cfg3", "parallel2_cfg1",
                                                                  "parallel2_cfg3"}
    assert all(v > 0 for v in row["env_steps_per_s"].values())


def test_bc_recovery_trains_the_baseline_without_views_in_the_same_run(tmp_path):
    """Both BCs come from the same stage and fleet; only the views differ (prob 0 vs --prob)."""
    from synth_fleet import make_segment

    from drivegpt.data.shards import write_shards

    seeds = [0, 1, 2, 3, 6, 8]  # seg0006 and seg0008 are held out at val_fraction=0.5 (test_policy_cli)
    write_shards(tmp_path / "fleet", 6, lambda i: make_segment(seed=seeds[i], t=20, events={12: 1}),
                 maxcount=1, progress=False)
    br = _load("bc_recovery")
    n = torch.get_num_threads()
    try:
        res = br.main(["--shards", str(tmp_path / "fleet"), "--experiment", "tiny", "--scenarios", "1",
                       "--seconds", "2", "--prob", "1.0", "--out", str(tmp_path / "runs"),
                       "--override", "data.val_fraction=0.5"])
    finally:
        torch.set_num_threads(n)
    assert set(res["runs"]) == {"without_seed0", "with_seed0"}
    probs = {}
    for name in res["runs"]:
        hp = torch.load(tmp_path / "runs" / name / "checkpoints" / "last.ckpt", map_location="cpu",
                        weights_only=False)["hyper_parameters"]
        probs[name] = float((hp.get("viewpoint") or {}).get("prob", 0.0))
    assert probs == {"without_seed0": 0.0, "with_seed0": 1.0}
    assert res["views"][0] == "rl.bc.viewpoint.prob=1.0"
    for row in res["runs"].values():  # both drove the held-out scenario closed loop
        assert row["km"] > 0 and set(row) >= {"per_100km", "lane_error_mean", "action_mae"}


def test_cruise_gap_bands_the_fleets_accel_by_the_gap_to_its_set_speed(tmp_path):
    """The synthetic segments speed up 4 m/s^2 from ~10 m/s: with a set speed of 40 every frame
    is in the 10-40 m/s band at +4; a segment without a set speed is counted and left out."""
    from synth_fleet import make_segment

    from drivegpt.data.shards import write_shards

    def item(i):
        seg = make_segment(seed=i, t=24, h=8, w=16, disengaged=(16, 24) if i == 0 else None)
        if i < 2:
            seg.meta["cruise_speed"] = 40.0
        return seg

    write_shards(tmp_path, 3, item, maxcount=1, progress=False)
    res = _load("cruise_gap").gap_table(sorted(str(p) for p in tmp_path.glob("*.tar")), interval=0.2)
    assert res["segments_without_cruise_speed"] == 1
    eng, hum = res["engaged"], res["human"]
    assert eng["frames"] == 2 * 20 - 4 and hum["frames"] == 4  # 20 accel frames a segment; frames 16-19 human
    assert eng["mean_accel"] == pytest.approx(4.0, abs=1e-3) and hum["mean_accel"] == pytest.approx(4.0, abs=1e-3)
    assert [b["gap_m_s"] for b in eng["bands"]] == [[10.0, 40.0]] and eng["bands"][0]["share"] == 1.0
