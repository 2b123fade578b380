"""The stage layer: every ``run(cfg) -> metrics`` entry point, above the library.

A stage turns a composed hydra config into library objects, calls the library and writes
``run_dir/metrics.json`` (and ``DONE``). ``REGISTRY`` is the one table of stages: the
``drivegpt`` command (``drivegpt.cli``) and ``drivegpt pipeline`` (``drivegpt.pipeline``)
both read it. Modules are named, not imported, so that ``drivegpt --help`` stays instant
(a stage imports torch, Lightning, ...); ``load(name)`` imports one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StageSpec:
    name: str  # registry key (the pipeline's stage names refer to these)
    words: tuple[str, ...]  # the ``drivegpt`` subcommand
    config: str  # primary config in configs/
    module: str  # module with run(cfg) -> dict
    help: str


_SPECS = [
    StageSpec("fleet_generate", ("fleet", "generate"), "fleet_generate", "drivegpt.stages.fleet",
              "drive a synthetic fleet in the procedural road world and write shards"),
    StageSpec("data_ingest", ("data", "ingest"), "data_ingest", "drivegpt.stages.ingest",
              "convert fleet logs (procedural, comma2k19, video+csv, gym) into shards"),
    StageSpec("data_inspect", ("data", "inspect"), "data_inspect", "drivegpt.stages.inspect",
              "summarise shards: hours, km, disengagements by cause, contact sheet"),
    StageSpec("train_tokenizer", ("train", "tokenizer"), "train_tokenizer", "drivegpt.stages.train_tokenizer",
              "train the VQ tokenizer on frame shards"),
    StageSpec("eval_tokenizer", ("eval", "tokenizer"), "eval_tokenizer", "drivegpt.stages.eval_tokenizer",
              "PSNR, SSIM, lane-marking PSNR, codebook usage on held-out frames"),
    StageSpec("tokenize", ("tokenize",), "tokenize", "drivegpt.stages.tokenize",
              "encode frame shards into token shards (trainer.predict, multi-GPU)"),
    StageSpec("train_world_model", ("train", "world_model"), "train_world_model",
              "drivegpt.stages.train_world_model", "train the DriveGPT world model on token shards"),
    StageSpec("eval_world_model", ("eval", "world_model"), "eval_world_model", "drivegpt.stages.eval_world_model",
              "bits/token, disengagement AUROC, counterfactual fidelity, pose-following"),
    StageSpec("rollout", ("rollout",), "rollout", "drivegpt.stages.rollout",
              "dream rollouts in the learned simulator: videos and predicted disengagements"),
    StageSpec("train_policy", ("train", "policy"), "train_policy", "drivegpt.stages.train_policy",
              "behaviour cloning (stage=bc) or RL in the learned simulator (stage=rl)"),
    StageSpec("eval_policy", ("eval", "policy"), "eval_policy", "drivegpt.stages.eval_policy",
              "closed-loop evaluation in the ground-truth road world"),
    StageSpec("export_policy", ("export", "policy"), "export_policy", "drivegpt.stages.export_policy",
              "ONNX, QDQ quantization, QNN HTP context binary, verification, device report"),
    StageSpec("report", ("report",), "report", "drivegpt.stages.report",
              "the HTML evaluation report of a run directory"),
    StageSpec("pipeline", ("pipeline",), "pipeline", "drivegpt.pipeline",
              "every stage in order on one run directory (the main job)"),
]

REGISTRY: dict[str, StageSpec] = {s.name: s for s in _SPECS}


def load(name: str) -> Callable:
    """The ``run(cfg)`` of stage ``name`` (imports its module)."""
    return importlib.import_module(REGISTRY[name].module).run


__all__ = ["REGISTRY", "StageSpec", "load"]
