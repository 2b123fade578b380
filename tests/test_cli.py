import json
import subprocess
import sys

import pytest

from drivegpt import cli
from drivegpt.config import compose
from drivegpt.runs import atomic_path, atomic_write_json, write_metrics


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in cli.COMMANDS:
        assert " ".join(cmd.words) in out


def test_unknown_command_fails(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_longest_match_and_overrides():
    cmd, rest = cli.find_command(["fleet", "generate", "segments=3", "out=x"])
    assert cmd.config == "fleet_generate" and rest == ["segments=3", "out=x"]
    assert cli.find_command(["fleet"]) is None


def test_every_command_module_and_config_exist():
    for cmd in cli.COMMANDS:
        assert callable(cli.load_run(cmd)), cmd
        cfg = compose(cmd.config, ["experiment=tiny", "run_dir=/tmp/x"])
        assert cfg.stage == cmd.config and cfg.run_dir == "/tmp/x"


def test_experiment_overrides_stage_defaults():
    base = compose("fleet_generate")
    tiny = compose("fleet_generate", ["experiment=tiny"])
    assert base.data.frame_height == 128 and tiny.data.frame_height == 32
    assert tiny.segments < base.segments
    assert str(base.run_dir).startswith("runs/fleet_generate/")


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "drivegpt", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fleet generate" in out.stdout


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"x": float("nan")})
    assert json.loads(target.read_text()) == {"x": None}


def test_write_metrics_merges(tmp_path):
    write_metrics(tmp_path, {"a": 1})
    write_metrics(tmp_path, {"b": 2})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1, "b": 2}


def test_cli_and_pipeline_read_one_stage_registry():
    from drivegpt import pipeline
    from drivegpt.stages import REGISTRY

    assert [c.name for c in cli.COMMANDS] == list(REGISTRY)
    assert {s.stage for s in pipeline.STAGES} <= set(REGISTRY)
    assert all(s.config == REGISTRY[s.stage].config for s in pipeline.STAGES)
