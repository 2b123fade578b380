"""One rule for config -> object: typed settings reject unknown keys, naming them; the learned
sim's defaults are written once (the dataclass; the config group only binds hydra values)."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from drivegpt.config import compose
from drivegpt.rl.policy import PolicyConfig
from drivegpt.rl.ppo import PPOConfig
from drivegpt.sim.learned import LearnedSimConfig
from drivegpt.tokenizer import Tokenizer
from drivegpt.world_model import WorldModelConfig


def test_an_unknown_key_raises_naming_it():
    cfg = compose("train_tokenizer", ["experiment=tiny"])
    cases = [
        (lambda: WorldModelConfig.from_dict({"vocab_size": 16, "grid": [2, 4], "n_layerz": 2}), "world_model.n_layerz"),
        (lambda: PPOConfig.from_dict({"lr": 1e-4, "kl_coeff": 0.1}), "rl.ppo.kl_coeff"),
        (lambda: PolicyConfig.from_dict({"hiden": 8}), "rl.policy.hiden"),
        (lambda: LearnedSimConfig.from_mapping({"temprature": 0.5}), "learned_sim.temprature"),
        (lambda: Tokenizer({**OmegaConf.to_container(cfg.tokenizer, resolve=True), "codebook_sise": 8}),
         "tokenizer.codebook_sise"),
        (lambda: Tokenizer({**OmegaConf.to_container(cfg.tokenizer, resolve=True), "vq": {"decy": 0.9}}),
         "tokenizer.vq.decy"),
    ]
    for build, key in cases:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build()


def test_learned_sim_group_holds_the_dataclass_defaults():
    cfg = compose("rollout", ["checkpoint=x"])
    group = OmegaConf.to_container(cfg.learned_sim, resolve=True)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(LearnedSimConfig)}
    bound = {"val_fraction": cfg.data.val_fraction, "fps": cfg.data.fps, "stride": cfg.data.stride, "device": "auto"}
    assert set(group) == set(defaults)
    assert {k: v for k, v in group.items() if k not in bound} == {k: v for k, v in defaults.items() if k not in bound}
    assert {k: group[k] for k in bound} == bound


def test_every_stage_reads_the_one_learned_sim_group_and_old_names_still_work():
    for name in ("rollout", "train_policy", "eval_policy"):
        assert compose(name, []).learned_sim.max_steps == 50
    cfg = compose("train_policy", ["learned_sim.temperature=0.5", "rl.sim.max_steps=7"])
    assert cfg.rl.sim.temperature == 0.5 and cfg.rl.sim.max_steps == 7  # rl.sim = learned_sim + RL's own
    from drivegpt.rl.envs import learned_sim_settings

    s = learned_sim_settings(cfg)
    assert s["temperature"] == 0.5 and s["max_steps"] == 7
    LearnedSimConfig.from_mapping(s)  # every key is a learned-sim setting


def test_precision_null_picks_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    """The demo's trainer.precision is null: bf16-mixed where the CPU multiplies bf16 in hardware,
    32-true where bf16 would be emulated (slower); an explicit precision always wins."""
    from drivegpt import training

    cfg = compose("train_tokenizer", ["experiment=demo", "trainer.accelerator=cpu"]).trainer
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    assert training.resolve_precision(cfg) == "bf16-mixed"
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: False)
    assert training.resolve_precision(cfg) == "32-true"
    tiny = compose("train_tokenizer", ["experiment=tiny"]).trainer
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    assert training.resolve_precision(tiny) == "32-true"


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


# what experiment=gpu may change against experiment=proof: budgets and hardware, nothing else
GPU_BUDGET_KEYS = {"data.batch_size", "data.num_workers", "workers", "tokenizer.train_steps",
                   "tokenizer.batch_size", "tokenizer.optim.lr",  # a batch and the learning rate that goes with it
                   "tokenizer.train_seconds", "tokenizer.image_every_n_steps", "world_model.max_steps",
                   "world_model.train_seconds", "eval.max_batches", "rl.ppo.accelerator", "rl.eval.workers",
                   "trainer.accelerator",
                   "trainer.precision", "trainer.checkpoint_every_n_steps", "run_dir"}


@pytest.mark.parametrize("stage", ["fleet_generate", "train_tokenizer", "eval_tokenizer", "train_world_model",
                                   "eval_world_model", "train_policy", "eval_policy"])
def test_gpu_preset_is_the_proof_with_other_budgets_only(stage):
    """experiment=gpu answers which proof misses are the CPU's budget: the road world, the fleet's
    seeds and size, resolution, token grid, model sizes, evaluation and targets must be the proof's."""
    def leaves(exp):
        cfg = compose(stage, [f"experiment={exp}", "run_dir=/tmp/x"])
        return _leaves(OmegaConf.to_container(cfg, resolve=False))

    gpu, proof = leaves("gpu"), leaves("proof")
    assert set(gpu) == set(proof)
    changed = {k for k in gpu if gpu[k] != proof[k]}
    assert changed <= GPU_BUDGET_KEYS, sorted(changed - GPU_BUDGET_KEYS)
    assert gpu["trainer.accelerator"] == "gpu" and gpu["targets"] == "proof"
    if stage == "fleet_generate":
        assert (gpu["segments"], gpu["seconds"], gpu["first_seed"]) == (proof["segments"], proof["seconds"],
                                                                        proof["first_seed"])
