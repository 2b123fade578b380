"""drivegpt fleet generate -> data inspect end to end on the tiny config (road world)."""

import json

import cv2
import numpy as np
import pytest

from drivegpt.data.schema import CAUSE_NAMES
from drivegpt.data.shards import read_manifest
from drivegpt.data.shard_reading import iter_samples
from drivegpt import cli
from filestate import freeze, states


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    out, run = tmp / "shards", tmp / "gen"
    # tiny: 4 segments x 6 s at 32x64, 2 segments per shard, 1 worker; road seeds 4..7
    # (seed 4's autopilot leaves its lane within 6 s, so the cause counts are not all zero)
    assert cli.main(["fleet", "generate", "experiment=tiny", "first_seed=4", f"out={out}", f"run_dir={run}"]) == 0
    return tmp, out, json.loads((run / "metrics.json").read_text())


def test_summary_matches_shard_arrays(fleet):
    tmp, out, m = fleet
    man = read_manifest(out)
    assert man["complete"] and man["samples"] == 4 and len(man["shards"]) == 2
    segs = list(iter_samples(out, frames=False))
    assert sorted(s.meta["segment_id"] for s in segs) == sorted(i for e in man["shards"] for i in e["segment_ids"])
    assert m["segments"] == 4 and m["frames"] == sum(len(s) for s in segs) == man["frames"]
    assert m["frames"] == 4 * 6 * 20  # 6 s at 20 Hz each
    dist = [np.abs(s.speed.astype(np.float64)) * np.append(np.diff(s.times), 1 / 20) for s in segs]
    km = sum(d.sum() for d in dist) / 1000
    ekm = sum(d[s.engaged].sum() for d, s in zip(dist, segs)) / 1000
    assert m["km"] == pytest.approx(km, rel=1e-6) and m["engaged_km"] == pytest.approx(ekm, rel=1e-6)
    assert m["hours"] == pytest.approx(4 * 6 / 3600, rel=1e-3)
    assert m["engaged_fraction"] == pytest.approx(np.mean(np.concatenate([s.engaged for s in segs])), abs=1e-6)
    counts = {c: int(sum((s.disengage == k + 1).sum() for s in segs)) for k, c in enumerate(CAUSE_NAMES)}
    assert m["disengagements_by_cause"] == counts
    # per held-out split (by segment id, data.val_fraction), adding up to the fleet
    from drivegpt.data.loaders import split_of

    sp = m["splits"]
    for name in ("train", "val"):
        mine = [s for s in segs if split_of(s.meta["segment_id"], sp["val_fraction"]) == name]
        assert sp[name]["segments"] == len(mine)
        assert sp[name]["disengagements_by_cause"] == {
            c: int(sum((s.disengage == k + 1).sum() for s in mine)) for k, c in enumerate(CAUSE_NAMES)}
    assert sp["train"]["km"] + sp["val"]["km"] == pytest.approx(km, rel=1e-6)
    assert sum(counts.values()) >= 1, "the tiny fleet should hold a disengagement (road seed 4)"
    assert 0 < m["engaged_fraction"] < 1  # the human drove after it
    assert ekm > 0
    assert m["disengagements_per_100_engaged_km"] == pytest.approx(sum(counts.values()) / ekm * 100)
    assert 5 < m["mean_speed_kmh"] < 200 and m["generate_seconds"] > 0


def test_inspect_agrees_and_draws_sheet(fleet):
    tmp, out, m = fleet
    run = tmp / "inspect"
    assert cli.main(["data", "inspect", "experiment=tiny", f"shards={out}", f"run_dir={run}"]) == 0
    mi = json.loads((run / "metrics.json").read_text())
    for k in ("segments", "frames", "hours", "km", "engaged_km", "engaged_fraction", "disengagements_by_cause"):
        assert mi[k] == m[k], k
    sheet = cv2.imread(str(run / "contact_sheet.png"))
    assert mi["contact_sheet_frames"] == 16 and sheet.shape[1] == 4 * 256 and sheet.std() > 10


def test_rerun_resumes_and_refuses_other_settings(fleet):
    tmp, out, _ = fleet
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    kept = freeze([out / "fleet-000000.tar"])
    (out / "fleet-000001.tar").unlink()  # as if killed before the second shard
    assert cli.main(["fleet", "generate", "experiment=tiny", "first_seed=4", f"out={out}", f"run_dir={tmp / 'gen2'}"]) == 0
    after = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert after == before  # the lost shard is written again, bit for bit
    assert states(kept) == kept  # the finished one is not rewritten (inode, mtime, bytes)
    assert json.loads((tmp / "gen2" / "metrics.json").read_text())["frames_this_run"] == 2 * 120
    from drivegpt.stages.fleet import run
    from drivegpt.config import compose

    with pytest.raises(ValueError, match=r"fleet\.json: .*other settings \(differs in seconds\)"):
        run(compose("fleet_generate", ["experiment=tiny", "first_seed=4", f"out={out}", "seconds=5",
                                       f"run_dir={tmp / 'gen3'}"]))
