"""drivegpt data ingest / data inspect end to end on small real-format inputs."""

import json

import cv2
import numpy as np
import pytest

from drivegpt.data.inspect import inspect_shards
from drivegpt.data.schema import Cause
from drivegpt.data.shards import read_manifest, write_shards
from drivegpt.data.shard_reading import iter_samples
from drivegpt import cli
from filestate import freeze, states
from synth_fleet import make_segment
from test_sources_comma2k19 import write_segment
from test_sources_csv_video import circle_rows, write_csv, write_video


def test_ingest_csv_video_then_inspect(tmp_path):
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_video(tmp_path / "in" / f"drive{k}.mp4")
        write_csv(tmp_path / "in" / f"drive{k}.csv", ["time", "x", "y", "yaw", "speed", "engaged", "disengage"],
                  circle_rows())
    out, run = tmp_path / "shards", tmp_path / "run"
    assert cli.main(["data", "ingest", "experiment=tiny", "source=csv_video", f"path={tmp_path / 'in'}",
                     f"out={out}", f"run_dir={run}"]) == 0
    man = read_manifest(out)
    assert man["complete"] and man["samples"] == 3 and len(man["shards"]) == 2  # tiny: 2 per shard
    m = json.loads((run / "metrics.json").read_text())
    # circle_rows: 12 frames at 10 m/s, 20 Hz, engaged for 8, one STEER + one BRAKE each
    assert m["segments"] == 3 and m["frames"] == 36
    assert m["km"] == pytest.approx(3 * 12 * 0.5 / 1000)
    assert m["engaged_km"] == pytest.approx(3 * 8 * 0.5 / 1000)
    assert m["engaged_fraction"] == pytest.approx(8 / 12)
    assert m["disengagements_by_cause"] == {"STEER": 3, "BRAKE": 3, "GAS": 0}
    assert m["disengagements_per_100_engaged_km_by_cause"]["STEER"] == pytest.approx(3 / 0.012 * 100)

    ins = tmp_path / "inspect"
    assert cli.main(["data", "inspect", "experiment=tiny", f"shards={out}", f"run_dir={ins}"]) == 0
    mi = json.loads((ins / "metrics.json").read_text())
    for k in ("segments", "frames", "km", "disengagements_by_cause", "engaged_fraction"):
        assert mi[k] == m[k]
    sheet = cv2.imread(str(ins / "contact_sheet.png"))
    assert sheet is not None and mi["contact_sheet_frames"] == 12  # 4 per segment x 3
    # re-running the ingest resumes: nothing rewritten
    before, manifest = freeze(out.glob("*.tar")), read_manifest(out)
    assert cli.main(["data", "ingest", "experiment=tiny", "source=csv_video", f"path={tmp_path / 'in'}",
                     f"out={out}", f"run_dir={run}"]) == 0
    assert states(before) == before  # every shard: same inode, the old mtime and the same bytes
    assert read_manifest(out) == manifest


def test_ingest_comma2k19_tree(tmp_path):
    for n in (3, 4):
        write_segment(tmp_path / "Chunk_1" / "route|2018-07-27--06-03-57" / str(n))
    out = tmp_path / "shards"
    assert cli.main(["data", "ingest", "experiment=tiny", "source=comma2k19", f"path={tmp_path / 'Chunk_1'}",
                     f"out={out}", f"run_dir={tmp_path / 'run'}"]) == 0
    segs = list(iter_samples(out))
    assert [s.meta["segment_id"] for s in segs] == ["route_2018-07-27--06-03-57_3", "route_2018-07-27--06-03-57_4"]
    assert segs[0].frames.shape[1:] == (32, 64, 3) and not segs[0].engaged.any()
    np.testing.assert_allclose(segs[0].speed, 10.0, atol=1e-3)


def test_inspect_summary_matches_arrays_and_labels_sheet(tmp_path):
    segs = [make_segment(seed=s, t=30, events={5: int(Cause.GAS)} if s == 1 else {5: int(Cause.STEER)},
                         disengaged=(6, 12)) for s in range(3)]
    write_shards(tmp_path / "sh", len(segs), lambda i: segs[i], maxcount=2, progress=False)
    m = inspect_shards(tmp_path / "sh", n_frames=5, per_segment=4, sheet_path=tmp_path / "sheet.png")
    km = sum(float((s.speed * np.append(np.diff(s.times), 0.05)).sum()) for s in segs) / 1000
    ekm = sum(float((s.speed * np.append(np.diff(s.times), 0.05))[s.engaged].sum()) for s in segs) / 1000
    assert m["km"] == pytest.approx(km) and m["engaged_km"] == pytest.approx(ekm)
    assert m["hours"] == pytest.approx(3 * 30 * 0.05 / 3600)
    assert m["disengagements_by_cause"] == {"STEER": 2, "BRAKE": 0, "GAS": 1}
    assert m["disengagements_per_100km_by_cause"]["GAS"] == pytest.approx(100 / km)
    assert m["contact_sheet_frames"] == 5 and m["shard_urls"] == 2
    img = cv2.imread(str(tmp_path / "sheet.png"))[..., ::-1]
    # tile 2 is segment 0's disengagement frame (frames sorted: 0, 5, ...): red cause text
    strip = img[28:42, 256:512].reshape(-1, 3).astype(int)
    red = (strip[:, 0] > 150) & (strip[:, 1] < 100) & (strip[:, 2] < 100)
    assert red.sum() > 20
    first = img[28:42, :256].reshape(-1, 3).astype(int)  # tile 1 is ENGAGED: green text, no red
    assert not ((first[:, 0] > 150) & (first[:, 1] < 100) & (first[:, 2] < 100)).any()


def test_unknown_source_and_missing_path(tmp_path):
    from drivegpt.stages.ingest import make_source
    from drivegpt.data.sources.common import SourceError
    from drivegpt.config import compose

    with pytest.raises(SourceError, match="unknown source='nope'"):
        make_source(compose("data_ingest", ["experiment=tiny", "source=nope", f"run_dir={tmp_path}"]))
    with pytest.raises(SourceError, match="source=comma2k19 needs path="):
        make_source(compose("data_ingest", ["experiment=tiny", "source=comma2k19", f"run_dir={tmp_path}"]))
    with pytest.raises(SourceError, match=r"nothere: no such file or directory"):
        make_source(compose("data_ingest", ["experiment=tiny", "source=csv_video", f"path={tmp_path}/nothere"]))
