"""Issue 14: output files are readable by teammates (0644, like shards), not mkstemp's 0600."""

import os
import stat

import numpy as np
import pytest

from drivegpt.runs import atomic_write_json, write_metrics, write_png


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(autouse=True)
def usual_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_manifests_metrics_pictures_and_videos_are_0644(tmp_path):
    from drivegpt.sim.learned.video import write_gif, write_webm

    paths = [atomic_write_json(tmp_path / "manifest.json", {"a": 1}), write_metrics(tmp_path, {"x": 1.0}),
             write_png(tmp_path / "sheet.png", np.zeros((4, 4, 3), np.uint8))]
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    paths.append(write_gif(tmp_path / "v.gif", frames, 5.0))
    webm = write_webm(tmp_path / "v.webm", frames, 5.0)
    if webm is not None:
        paths.append(webm)
    for p in paths:
        assert _mode(p) == 0o644, (p, oct(_mode(p)))  # before: 0600
