"""Would cross-fitting fix the memorising hazard head? A diagnostic on a finished run.

    python benchmarks/hazard_crossfit.py --run-dir runs/gpu

The world model's hazard head memorises its training segments (README "Measurement log"): a head
fit on the start-token states of segments the transformer trained on ranks their events at AUROC
0.99 and the held-out ones near chance. Cross-fitting would fit the head on states of segments
the transformer never saw. This script measures what that buys without training a second
transformer: it reads the run's world model (``06_train_world_model/world_model.pt``), its config
(``.hydra/config.yaml``) and token shards (``05_tokenize/tokens``), collects the head's inputs once
per frame (``drivegpt.world_model.hazard.hazard_inputs``) on the training split and on the held-out
split, splits the held-out *segments* in two halves (seeded), and for each half B scores on B:

- ``joint``: the run's own head;
- ``fit_train``: ``refit_hazard_head`` on the training split's states (what the stage can do);
- ``crossfit``: ``refit_hazard_head`` on the other held-out half's states (segments the
  transformer never saw, as cross-fitting would give it);
- each refit also with the start-token state zeroed (``_moves_only``: the recent moves alone).

The held-out split is used to *fit* heads here, so these figures are a design diagnostic, never
a score: the scoreboard's AUROC stays the evaluation stage's. Prints ONE JSON line: 2 s AUROC per
cause (and positives) for every (head, half), and their means over the two halves.

measured (2026-12-06, ``runs/gpu``: the H100 world model, 13,080 training and 6,120 held-out
frames, 51 held-out segments; this CPU, ~2 min): mean over the halves, STEER / BRAKE: joint
0.61 / 0.48, fit_train 0.60 / 0.50, crossfit **0.54 / 0.42**, fit_train_moves_only 0.56 / 0.54,
crossfit_moves_only 0.57 / 0.57. A head fit on unseen segments' states does no better than one fit
on seen ones: the states do not carry a hazard that transfers, so cross-fitting was not built.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivegpt.data.datamodule import FleetDataModule  # noqa: E402
from drivegpt.stages.common import bind_fps  # noqa: E402
from drivegpt.world_model.checkpoint import load_world_model  # noqa: E402
from drivegpt.world_model.hazard import hazard_inputs, refit_hazard_head  # noqa: E402
from drivegpt.world_model.metrics import _auroc_ap  # noqa: E402

CAUSES = ("steer", "brake", "gas")


def _rows(d: dict, keep) -> dict:
    idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.long)
    return dict(start=d["start"][idx], feats=d["feats"][idx], target=d["target"][idx], mask=d["mask"][idx],
                segment=[d["segment"][i] for i in idx.tolist()])


def _moves_only(d: dict) -> dict:
    return dict(d, start=torch.zeros_like(d["start"]))


def score(model, d: dict, horizon: float = 2.0) -> dict:
    """2 s AUROC per cause of ``model``'s head on the inputs ``d`` (None under 5 positives)."""
    with torch.no_grad():
        logits = model.dis_head(model.hazard_input(d["start"], d["feats"]).float())
        logits = logits.view(-1, *d["target"].shape[1:]) + model.dis_prior.float()
    j = list(model.cfg.horizons).index(horizon)
    out = {}
    for c, name in enumerate(CAUSES):
        sel = d["mask"][:, j, c] > 0
        y = d["target"][sel, j, c]
        out[name] = float(_auroc_ap(logits[sel, j, c], y)[0]) if int(y.sum()) >= 5 and int((1 - y).sum()) else None
        out[f"{name}_positives"] = int(y.sum())
    return out


def crossfit(model, train: dict, val: dict, seed: int = 0) -> dict:
    segs = sorted(set(val["segment"]))
    if len(segs) < 4:
        raise ValueError(f"the held-out split has {len(segs)} segments: at least 4 are needed for two halves")
    perm = np.random.default_rng(seed).permutation(segs)
    halves = [set(perm[: len(perm) // 2]), set(perm[len(perm) // 2:])]
    head0 = copy.deepcopy(model.dis_head.state_dict())
    res: dict = {}
    for b in (0, 1):
        fit_on = _rows(val, [s in halves[1 - b] for s in val["segment"]])
        on = _rows(val, [s in halves[b] for s in val["segment"]])
        model.dis_head.load_state_dict(head0)
        res[f"joint/half{b}"] = score(model, on)
        for name, src in (("fit_train", train), ("crossfit", fit_on)):
            for suffix, f in (("", lambda d: d), ("_moves_only", _moves_only)):
                model.dis_head.load_state_dict(head0)
                rep = refit_hazard_head(model, f(src), seed=seed)
                res[f"{name}{suffix}/half{b}"] = score(model, f(on)) | {
                    "aside_score": rep.get("aside_score_refit"), "weight_decay": rep.get("weight_decay")}
    model.dis_head.load_state_dict(head0)
    means = {}
    for key in sorted({k.split("/")[0] for k in res}):
        for c in CAUSES:
            v = [res[f"{key}/half{b}"][c] for b in (0, 1)]
            means[f"{key}_{c}"] = float(np.mean(v)) if all(x is not None for x in v) else None
    return {"halves": res, "mean": means, "held_out_segments": len(segs),
            "frames": {"train": len(train["segment"]), "val": len(val["segment"])}}


def main(argv=None) -> dict:
    from omegaconf import OmegaConf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = Path(a.run_dir)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.data.shards = str(run / "05_tokenize" / "tokens")
    cfg.data.num_workers = 1
    bind_fps(cfg)
    cfg.data.window_step = int(cfg.data.stride) * int(cfg.data.context_frames)  # each frame once
    cfg.data.windows_per_segment = None
    model = load_world_model(str(run / "06_train_world_model" / "world_model.pt")).float().eval()
    data = {}
    for split in ("train", "val"):
        loader = FleetDataModule(cfg, kind="windows", key="tokens").dataloader(split, shuffle=False, resampled=False)
        data[split] = hazard_inputs(model, loader)
        if data[split] is None:
            raise ValueError(f"{cfg.data.shards}: the {split} windows carry no disengagement targets")
    out = crossfit(model, data["train"], data["val"], a.seed)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
