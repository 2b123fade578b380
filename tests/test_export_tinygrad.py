"""The Snapdragon 845 path: the exported fp32/fp16 ONNX run by tinygrad's ONNX runner under TinyJit on
its CPU backend (clang; .ci/run installs it, so none of this is skipped), parity against PyTorch fp32
on held-out frames, tinygrad's counts and the Adreno 630 estimate, ops tinygrad cannot run named,
parity failures failing the export, and the device kit (run_on_comma.py) running the artifact."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from drivegpt.config import compose
from drivegpt.export import onnx_export as ox
from drivegpt.export import tinygrad_gpu as tg
from drivegpt.export.export import export_module, verify_tinygrad
from drivegpt.export.report import count_flops, verify_manifest
from drivegpt.export.verify import action_errors
from drivegpt.stages.export_policy import run

from test_export import (SHAPE, constant, cruise_fp32, cruise_module, cruise_policy_ckpt,  # noqa: F401 (fixtures)
                         fp32, policy, windows)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tinygrad_cpu_backend_is_usable_here():
    ok, why = tg.tinygrad_status("CPU")
    assert ok, why  # CI installs tinygrad ([test] extra) and clang (.ci/run): these tests must run


@pytest.fixture(scope="module")
def fp16(fp32):  # noqa: F811
    return ox.to_fp16(fp32, fp32.parent / "p16.onnx")


def test_fp32_and_fp16_parity_counts_under_the_jit(policy, fp32, fp16, windows):  # noqa: F811
    _, held = windows
    ref = ox.torch_actions(policy, held.frames, held.speed)
    r32, r16 = tg.TinygradPolicy(fp32), tg.TinygradPolicy(fp16)
    a32, a16 = r32.run(held.frames, held.speed), r16.run(held.frames, held.speed)
    assert r32.calls == len(held.frames) > 2  # calls 3.. are JIT replays: parity covers them
    assert np.abs(a32 - ref).max() <= 1e-4
    e16 = action_errors(a16, ref)
    assert 0 < e16["max"] and e16["p95_frac"] <= 0.01, e16
    assert np.abs(ref).max() > 1e-2  # actions are not trivially zero

    c32, c16 = r32.counts(held.frames, held.speed), r16.counts(held.frames, held.speed)
    assert c32 == r32.counts(held.frames, held.speed)  # a replay is the same work every call
    assert 0 < c32["kernels"] < 100
    # tinygrad counts every ALU op (elementwise too); torch's counter only matmul/conv MACs x 2
    assert c32["flops"] >= count_flops(policy, ox.example_inputs(SHAPE)) > 0
    params = sum(p.numel() for p in policy.parameters())
    assert c32["bytes"] > 4 * params and c16["bytes"] < 0.75 * c32["bytes"]  # fp16 moves about half


def test_cruise_graph_under_the_jit(cruise_module, cruise_fp32, windows):  # noqa: F811
    """A policy with cfg.cruise: tinygrad feeds its third input (NaN = unknown) and matches PyTorch."""
    _, held = windows
    n = 6
    frames, speed = held.frames[:n], held.speed[:n]
    runner = tg.TinygradPolicy(cruise_fp32)
    assert runner.input_names == ["frames", "speed", "cruise"]
    got = {}
    for label, cruise in (("held-out", held.cruise[:n]), ("unknown", constant(n, np.nan)), ("25", constant(n, 25.0))):
        got[label] = runner.run(frames, speed, cruise)  # one JIT: calls 3.. replay it with new values
        assert np.abs(got[label] - ox.torch_actions(cruise_module, frames, speed, cruise)).max() <= 1e-4, label
    assert np.abs(got["unknown"] - got["25"]).max(axis=1).min() > 1e-3  # the replay reads the new input
    assert runner.counts(frames, speed, held.cruise[:n])["kernels"] > 0
    with pytest.raises(ValueError, match="input 'cruise'"):
        runner(frames[:1], speed[:1])


def _graph(node, extra_init=(), out_shape=(5,)):
    x = helper.make_tensor_value_info("frames", TensorProto.FLOAT, [1, 2, 2])
    s = helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    model = helper.make_model(helper.make_graph([node], "g", [x, s], [y], list(extra_init)),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def test_an_op_tinygrad_has_not_is_named_before_running(tmp_path):
    onnx.save(_graph(helper.make_node("Det", ["frames"], ["y"], name="det0"), out_shape=(1,)), tmp_path / "det.onnx")
    with pytest.raises(tg.TinygradUnsupportedOpsError, match=r"det.onnx: .*no implementation.*Det \(node det0 -> y\)"):
        tg.TinygradPolicy(tmp_path / "det.onnx")


def test_an_op_that_fails_names_node_and_error(tmp_path):
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [5])
    onnx.save(_graph(helper.make_node("Reshape", ["frames", "shape"], ["y"], name="r0"), [shape]), tmp_path / "r.onnx")
    runner = tg.TinygradPolicy(tmp_path / "r.onnx")
    with pytest.raises(tg.TinygradRunError, match=r"Reshape \(node r0 -> y\) of r.onnx: ValueError: .*reshape"):
        runner(np.zeros((1, 2, 2), np.float32), np.zeros((1, 1), np.float32))


def test_adreno_estimate_by_hand():
    a = {"gpu_fp16_gflops": 345, "fp32_rate": 0.5, "utilisation": 0.25, "mem_gbs": 29.9, "mem_utilisation": 0.5,
         "kernel_overhead_us": 10}
    counts = {"kernels": 100, "flops": int(345e9 * 0.25 * 2e-3), "bytes": int(29.9e9 * 0.5 * 1e-3)}
    fp16 = tg.adreno_estimate(counts, True, a, 50.0)  # 1 ms launch + max(2 ms compute, 1 ms memory)
    assert fp16["ms"] == pytest.approx(3.0) and fp16["bound"] == "compute" and fp16["within_budget"]
    assert tg.adreno_estimate(counts, False, a, 3.5)["ms"] == pytest.approx(5.0)  # fp32 at half rate: over 3.5


def test_tinygrad_missing_fails_the_845_and_is_noted_elsewhere(monkeypatch, tmp_path):
    cfg = compose("export_policy", ["experiment=tiny", "checkpoint=x", f"run_dir={tmp_path}"])
    monkeypatch.setattr(tg, "tinygrad_status", lambda device: (False, "tinygrad is not installed"))
    with pytest.raises(RuntimeError, match="runs on tinygrad, which cannot run here: tinygrad is not installed"):
        verify_tinygrad({}, None, None, None, cfg.export, 50.0, gpu_is_tinygrad=True)
    sec = verify_tinygrad({}, None, None, None, cfg.export, 50.0, gpu_is_tinygrad=False)
    assert sec == {"verified": False, "note": "not verified: tinygrad is not installed"}


def _cfg(tmp_path, *extra):
    return compose("export_policy", ["experiment=tiny", f"run_dir={tmp_path}", "export.verify.count=12",
                                     "export.calibration.count=4", "export.timing_runs=3", *extra])


def test_sd845_export_verifies_the_tinygrad_artifact_and_ships_a_runner(cruise_policy_ckpt, tmp_path):  # noqa: F811
    """A policy with cfg.cruise (configs/rl/default.yaml): the kit's sample and runner carry its cruise input."""
    metrics = run(_cfg(tmp_path, f"checkpoint={cruise_policy_ckpt}", "target=sd845"))
    assert metrics["failed_checks"] == [] and metrics["target"] == "sdm845"
    assert metrics["tinygrad_fp32"]["action_err_max"] <= 1e-4 and metrics["tinygrad_fp32"]["passed"]
    assert 0 < metrics["tinygrad_fp16"]["p95_frac"] <= 0.01
    t = metrics["tinygrad"]
    assert t["verified"] and t["cpu_ms"] > 0 and t["vs_torch"] > 0 and t["vs_ort"] > 0
    for kind in ("fp32", "fp16"):
        assert t[kind]["kernels"] > 0 and t[kind]["flops"] > 0 and t[kind]["bytes"] > 0
        assert 0 < t[kind]["adreno630_est_ms"] < 50 and t[kind]["within_budget"]

    out = tmp_path / "export"
    rep = json.loads((out / "report.json").read_text())
    assert {a["file"] for a in rep["artifacts"]} == {"policy_fp32.onnx", "policy_fp16.onnx", "policy_qdq.onnx"}
    assert "tinygrad" in next(a["runtime"] for a in rep["artifacts"] if a["file"] == "policy_fp16.onnx")
    deploy = {d["engine"]: d for d in rep["deployment"]}
    assert deploy["Adreno 630 GPU"]["artifact"].startswith("policy_fp16.onnx") and "QCOM" in deploy["Adreno 630 GPU"]["runtime"]
    assert "sm8550" in deploy["Hexagon HTP"]["soc"] and "QNN" in deploy["Hexagon HTP"]["runtime"]
    assert deploy["CPU"]["artifact"] == "policy_fp32.onnx" and deploy["CPU"]["soc"] == "any"
    md = (out / "report.md").read_text()
    assert "Which file goes on which device" in md and "vision 18 ms + policy 7 ms" in md and "FAIL" not in md
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["file"] for s in manifest["support_files"]} == {tg.RUNNER, tg.DEVICE_README, tg.SAMPLE}
    assert manifest["toolchain"]["tinygrad"] == tg.tinygrad_version() and verify_manifest(out) == []
    assert "DEV=QCOM IMAGE=2" in (out / tg.DEVICE_README).read_text()

    # the shipped runner, on tinygrad's CPU backend here (DEV=QCOM on the device), checks the shipped sample
    env = {**os.environ, "DEV": "CPU"}
    for model in ("policy_fp16.onnx", "policy_fp32.onnx"):
        res = subprocess.run([sys.executable, str(out / tg.RUNNER), "--model", model, "--check", str(out / tg.SAMPLE),
                              "--runs", "2"], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["parity_passed"] and got["device"] == "CPU" and got["kernels"] == t[model[7:11]]["kernels"]

    sample = np.load(out / tg.SAMPLE)
    sample["frames"][0, 0, 0, 0, 0]  # readable
    assert sample["cruise"].shape == sample["speed"].shape and sample["cruise"].dtype == np.float32
    assert [i["name"] for i in manifest["inputs"]] == ["frames", "speed", "cruise"]
    (out / tg.SAMPLE).write_bytes(b"x")
    assert verify_manifest(out) == [f"{out / tg.SAMPLE}: sha256 differs from manifest.json"]


def test_a_tinygrad_parity_failure_fails_the_export_naming_the_output(policy_ckpt, tmp_path):
    cfg = _cfg(tmp_path, f"checkpoint={policy_ckpt}", "target=sd845", "export.tinygrad.fp16_p95_frac_of_range=0")
    with pytest.raises(RuntimeError, match=r"tinygrad fp16 \(CPU, TinyJit\) vs PyTorch fp32: output 'action' error "
                                           r"max [0-9.e-]+, p95 .*% of range; p95 <= 0% of range not met"):
        run(cfg)
    assert not (tmp_path / "DONE").exists()
    rep = json.loads((tmp_path / "export" / "report.json").read_text())  # the report is written first
    assert rep["checks"]["tinygrad fp32 (CPU, TinyJit) vs PyTorch fp32"]["passed"]


def test_unknown_target_lists_the_aliases(policy, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="target='sd9000'.*aliases.*sd845"):
        export_module(policy, SHAPE, _cfg(tmp_path, "checkpoint=x", "target=sd9000"), tmp_path / "e")
