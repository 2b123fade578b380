"""QNN HTP: EPContext produced, reloads and runs on the HTP backend (x86 simulator) with parity;
unsupported ops fail loudly; the whole export stage writes a manifest matching its artifacts."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from drivegpt.config import compose
from drivegpt.export import onnx_export as ox
from drivegpt.export import qnn
from drivegpt.export.export import HTPUnavailableError, NotAPolicyError, export_module, load_export_module
from drivegpt.stages.export_policy import run
from drivegpt.export.report import verify_manifest
from drivegpt.export.verify import action_errors

from test_export import (SHAPE, constant, cruise_fp32, cruise_module, cruise_policy_ckpt, cruise_qdq,  # noqa: F401
                         fp32, policy, qdq, windows)  # (fixtures)

OK, WHY = qnn.qnn_status()
needs_qnn = pytest.mark.skipif(not OK, reason=f"QNN HTP backend unavailable here: {WHY}")
SM8550 = {"name": "sm8550", "has_htp": True, "htp_arch": 73, "soc_model": 43}


@needs_qnn
def test_epcontext_compiles_reloads_and_matches(policy, qdq, windows, tmp_path):
    ctx = qnn.compile_epcontext(qdq, tmp_path / "ctx.onnx", SM8550)
    model = onnx.load(str(ctx))
    (node,) = model.graph.node  # the whole graph is one HTP context: nothing left on the CPU
    assert node.op_type == "EPContext"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["embed_mode"] == 1 and len(attrs["ep_cache_context"]) > 1000
    _, held = windows
    htp = ox.run_session(qnn.htp_session(ctx, SM8550), held.frames, held.speed)  # fresh session: reload
    cpu_qdq = ox.run_session(ox.cpu_session(qdq), held.frames, held.speed)
    ref = ox.torch_actions(policy, held.frames, held.speed)
    assert action_errors(htp, ref)["p95_frac"] <= 0.02
    assert action_errors(htp, cpu_qdq)["p95_frac"] <= 0.005


@needs_qnn
@pytest.mark.usefixtures("one_thread")
def test_cruise_epcontext_runs_whole_on_the_htp_and_reads_nan_as_unknown(  # noqa: F811
        cruise_module, cruise_qdq, windows, tmp_path):
    """The NaN guard (kept float in the QDQ model) runs on the HTP too: no CPU fallback, and an
    unknown set speed is unknown there, not some quantized number."""
    ctx = qnn.compile_epcontext(cruise_qdq, tmp_path / "ctx.onnx", SM8550)
    (node,) = onnx.load(str(ctx)).graph.node
    assert node.op_type == "EPContext"
    assert [i.name for i in onnx.load(str(ctx)).graph.input] == ["frames", "speed", "cruise"]
    _, held = windows
    session, n = qnn.htp_session(ctx, SM8550), len(held.frames)
    cases = {"held-out": held.cruise, "unknown": constant(n, float("nan")), "25 m/s": constant(n, 25.0)}
    want = {label: ox.torch_actions(cruise_module, held.frames, held.speed, c) for label, c in cases.items()}
    apart = np.abs(want["unknown"] - want["25 m/s"]).mean()  # how far a wrong reading of NaN would land
    for label, cruise in cases.items():
        e = action_errors(ox.run_session(session, held.frames, held.speed, cruise), want[label])
        assert e["mean"] < 0.25 * apart and e["p95_frac"] <= 0.04, (label, e)


@needs_qnn
def test_unsupported_op_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["d"], name="det0"),
                               helper.make_node("Relu", ["d"], ["y"], name="relu0")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "det.onnx")
    with pytest.raises(qnn.UnsupportedOpsError, match=r"Det \(node det0\)"):
        qnn.compile_epcontext(tmp_path / "det.onnx", tmp_path / "ctx.onnx", SM8550)
    assert not (tmp_path / "ctx.onnx").exists()


def test_target_without_htp_is_refused(qdq, tmp_path):
    with pytest.raises(ValueError, match="sdm845.*no Hexagon HTP.*GPU fp16"):
        qnn.compile_epcontext(qdq, tmp_path / "c.onnx", {"name": "sdm845", "has_htp": False})


def _cfg(tmp_path, *extra):
    return compose("export_policy", ["experiment=tiny", f"run_dir={tmp_path}", "checkpoint=none", *extra])


@needs_qnn
def test_export_stage_artifacts_manifest_report(cruise_policy_ckpt, tmp_path):  # noqa: F811
    """A policy with cfg.cruise (configs/rl/default.yaml): its cruise input goes through every artifact."""
    metrics = run(_cfg(tmp_path, f"checkpoint={cruise_policy_ckpt}", "target=sm8550"))
    assert metrics["failed_checks"] == [] and (tmp_path / "DONE").exists()
    assert 0 < metrics["qnn"]["action_err_p95"] <= 0.04 and metrics["fp32"]["action_err_max"] <= 1e-4
    assert json.loads((tmp_path / "metrics.json").read_text())["qnn"]["passed"] is True
    assert (tmp_path / "device_report.md").read_text() == (tmp_path / "export" / "report.md").read_text()
    out = tmp_path / "export"
    rep = json.loads((out / "report.json").read_text())
    files = {a["file"] for a in rep["artifacts"]}
    assert files == {"policy_fp32.onnx", "policy_fp16.onnx", "policy_qdq.onnx", "policy_sm8550_ctx.onnx"}
    assert len(rep["checks"]) == 7 and rep["frames"]["heldout_split"] == "val"
    assert rep["checks"]["fp32 ONNX (ORT CPU) vs PyTorch fp32"]["errors"]["max"] <= 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0] == {**manifest["inputs"][0], "name": "frames", "dtype": "uint8",
                                     "shape": [1, *SHAPE]}
    assert manifest["inputs"][2] == {"name": "cruise", "shape": [1, 1], "dtype": "float32",
                                     "normalisation": "m/s, raw; NaN = unknown"} and len(manifest["inputs"]) == 3
    for a in rep["artifacts"]:  # every artifact reads it (the EPContext model too)
        assert [i.name for i in onnx.load(str(out / a["file"])).graph.input] == ["frames", "speed", "cruise"], a
    assert rep["frames"]["heldout_cruise_known"] == rep["frames"]["heldout_n"]  # the road's limit: always known
    assert verify_manifest(out) == []
    assert manifest["toolchain"]["qnn_sdk"] and manifest["target"]["soc_model"] == 43
    ctx = out / "policy_sm8550_ctx.onnx"
    data = bytearray(ctx.read_bytes())
    data[-1] ^= 0xFF
    ctx.write_bytes(bytes(data))
    assert verify_manifest(out) == [f"{ctx}: sha256 differs from manifest.json"]
    assert rep["latency"]["sdm845"]["has_htp"] is False and "htp_int8" not in rep["latency"]["sdm845"]
    md = (out / "report.md").read_text()
    assert "18 ms" in md and "policy_sm8550_ctx.onnx" in md and "FAIL" not in md


def test_845_target_gets_gpu_and_cpu_artifacts_only(policy_ckpt, tmp_path):
    run(_cfg(tmp_path, f"checkpoint={policy_ckpt}", "target=sdm845", "export.verify.count=4",
             "export.calibration.count=4", "export.timing_runs=1"))
    rep = json.loads((tmp_path / "export" / "report.json").read_text())
    assert {a["file"] for a in rep["artifacts"]} == {"policy_fp32.onnx", "policy_fp16.onnx", "policy_qdq.onnx"}
    assert "no Hexagon HTP" in rep["htp_note"] and rep["target"]["name"] == "sdm845"
    assert verify_manifest(tmp_path / "export") == []
    # a policy without cfg.cruise (older checkpoints) keeps exactly its two inputs, in every artifact
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["frames", "speed"] == rep["inputs"]
    for a in rep["artifacts"]:
        assert [i.name for i in onnx.load(str(tmp_path / "export" / a["file"])).graph.input] == ["frames", "speed"]


def test_htp_target_fails_unless_told_to_skip(policy_ckpt, tmp_path, monkeypatch):
    """Where the QNN HTP backend cannot load, an export for an HTP target fails before any work
    instead of quietly dropping the context binary; export.skip_htp=true exports without it and
    says so in the metrics and the report."""
    monkeypatch.setattr(qnn, "qnn_status", lambda: (False, "onnxruntime-qnn unavailable: simulated by the test"))
    small = ["export.verify.count=4", "export.calibration.count=4", "export.timing_runs=1"]
    with pytest.raises(HTPUnavailableError, match=r"sm8550.*simulated by the test.*export\.skip_htp=true"):
        run(_cfg(tmp_path / "a", f"checkpoint={policy_ckpt}", "target=sm8550", *small))
    assert not (tmp_path / "a" / "DONE").exists() and not (tmp_path / "a" / "export" / "policy_fp32.onnx").exists()

    metrics = run(_cfg(tmp_path / "b", f"checkpoint={policy_ckpt}", "target=sm8550", "export.skip_htp=true", *small))
    assert "simulated by the test" in metrics["htp_skipped"] and "qnn" not in metrics
    out = tmp_path / "b" / "export"
    rep = json.loads((out / "report.json").read_text())
    assert {a["file"] for a in rep["artifacts"]} == {"policy_fp32.onnx", "policy_fp16.onnx", "policy_qdq.onnx"}
    assert not any("HTP" in name for name in rep["checks"])
    assert "SKIPPED (export.skip_htp=true)" in (out / "report.md").read_text()


def test_flops_match_a_hand_count(policy):
    from drivegpt.export.report import count_flops

    convs = [(9, 12, 16 * 32), (12, 12, 8 * 16), (12, 16, 4 * 8)]  # (c_in, c_out, output pixels), 3x3
    macs = sum(ci * co * 9 * px for ci, co, px in convs) + 17 * 32 + 32 * 2
    assert count_flops(policy, ox.example_inputs(SHAPE)) == 2 * macs


def test_non_policy_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "tok.ckpt"
    torch.save({"kind": "drivegpt-tokenizer", "state_dict": {}}, bad)
    with pytest.raises(NotAPolicyError, match="tok.ckpt: key 'kind' is 'drivegpt-tokenizer'"):
        run(_cfg(tmp_path, f"checkpoint={bad}"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NotAPolicyError, match="junk.ckpt: not a readable torch checkpoint"):
        load_export_module(junk)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_export_module(tmp_path / "missing.ckpt")


def test_unknown_target_is_refused(policy, tmp_path):
    with pytest.raises(ValueError, match="target='sd9000'.*sm8550"):
        export_module(policy, SHAPE, _cfg(tmp_path, "target=sd9000"), tmp_path / "e")


@needs_qnn
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("longitudinal", ["accel", "speed"])
def test_lateral_envelope_runs_whole_on_the_htp(longitudinal, tmp_path):
    """rl.policy.max_lat_accel is part of the graph: it compiles into one HTP context (no op left for
    the CPU) and the bound holds there at highway speed. (An earlier form clamped the speed input
    itself; in the export stage's graph that became a Clip on the float graph input, which the HTP
    refused: runs/demo_e4's first export. This small graph did not reproduce that refusal, so the
    test guards the current form, not the old one's failure.)"""
    from drivegpt.export.quantize import quantize_qdq
    from drivegpt.rl.policy import Policy
    from drivegpt.sim.vehicle import ACTION_SCALE
    from test_policy_speed import export_case

    torch.manual_seed(0)
    p = Policy(dict(context_frames=3, frame_height=32, frame_width=64, channels=(8, 16, 16, 16), pool_grid=(2, 4),
                    frame_features=16, bottleneck_dim=16, hidden=32, cruise=True, longitudinal=longitudinal,
                    max_lat_accel=2.0)).eval()
    torch.nn.init.normal_(p.actor[-1].weight, std=3.0)  # curvatures past the bound
    fp32_path, frames, speed, cruise, ref = export_case(p, tmp_path / "e.onnx", 32, 2.0, 35.0)
    q = quantize_qdq(fp32_path, tmp_path / "q.onnx", frames, speed, cruise=cruise)
    ctx = qnn.compile_epcontext(q, tmp_path / "ctx.onnx", SM8550)
    (node,) = onnx.load(str(ctx)).graph.node
    assert node.op_type == "EPContext"
    htp = ox.run_session(qnn.htp_session(ctx, SM8550), frames, speed, cruise)
    fast = speed[:, 0] > 20.0
    assert (speed[fast, 0] ** 2 * np.abs(ref[fast, 0]) * ACTION_SCALE[0]).max() == pytest.approx(2.0, rel=1e-3)
    assert (speed[fast, 0] ** 2 * np.abs(htp[fast, 0]) * ACTION_SCALE[0]).max() <= 2.0 * 1.1
    assert action_errors(htp, ref)["p95_frac"] <= 0.02
