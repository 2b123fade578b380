"""Scale-out: the world-model training entry point under DDP (two CPU processes, gloo).

Checks what DDP must guarantee with ``data.resampled=false`` on an even layout: each rank reads
its own shards (disjoint data), training moved the weights from their initial values, and both
ranks end with identical weights (gradients were all-reduced). Uneven layouts and the default
(resampled) mode: tests/test_scaleout.py.
"""

import json

import numpy as np
import pytest

from drivegpt.config import compose
from drivegpt.world_model.patch_tokenizer import PatchTokenizer


def token_item(i: int) -> dict:
    from drivegpt.sim.roadworld import drive_segment

    seg = drive_segment(200 + i, 4.0, None, 32, 64)
    tok = PatchTokenizer().encode(seg.frames).numpy().astype(np.int16)
    meta = dict(seg.meta, tokens={"vocab_size": PatchTokenizer().vocab_size, "grid": [4, 8],
                                  "tokenizer_path": None})
    item = {k: v for k, v in seg.arrays().items() if k != "lane_mask"}
    return dict(item, tokens=tok, meta=meta)


@pytest.mark.slow
def test_two_rank_ddp_spawn_disjoint_data_identical_weights(tmp_path):
    from drivegpt.data.shards import write_shards
    from drivegpt.stages.train_world_model import run

    shards = tmp_path / "tokens"
    write_shards(shards, 8, token_item, maxcount=1, progress=False)  # 8 shards -> 4 per rank
    run_dir = tmp_path / "run"
    cfg = compose("train_world_model", [
        "experiment=tiny", f"run_dir={run_dir}", f"data.shards={shards}", "data.context_frames=3",
        "data.val_fraction=0.0", "data.batch_size=2", "data.num_workers=0",
        "data.resampled=false",  # each sample once per epoch (the default on 2 ranks resamples)
        "trainer.devices=2", "trainer.strategy=ddp_spawn", "trainer.max_steps=3",
        "trainer.limit_val_batches=0", "trainer.audit=true",
        "world_model.n_layer=1", "world_model.n_embd=32", "world_model.n_head=2",
    ])
    run(cfg)
    audits = [json.loads((run_dir / "audit" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [a["world_size"] for a in audits] == [2, 2]
    seen = [set(a["seen"]) for a in audits]
    assert all(len(s) == 3 * 2 for s in seen)  # 3 steps x batch 2, no repeats within a rank
    assert not seen[0] & seen[1], "ranks trained on the same windows"
    segs = [{k.split("@")[0] for k in s} for s in seen]
    assert not segs[0] & segs[1], "ranks read the same segments (shards not split by node)"
    assert audits[0]["weights_sha256"] == audits[1]["weights_sha256"]
    # identical because both trained, not because neither did: the weights moved from their start
    for a in audits:
        assert a["params_total"] > 10 and a["max_abs_change"] > 1e-4, a
        assert a["params_changed"] >= 0.8 * a["params_total"], (a["params_changed"], a["params_total"])
    assert [a["max_abs_change"] for a in audits] == [audits[0]["max_abs_change"]] * 2
