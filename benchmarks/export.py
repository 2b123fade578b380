"""Export benchmark: ONNX Runtime CPU vs PyTorch eager (batch 1, same graph), FLOPs per frame
set at 128x256, quantized action error (QDQ on the CPU EP, EPContext on the QNN HTP backend), and
the Snapdragon 845 path: tinygrad (OnnxRunner + TinyJit, CPU backend) parity, its JIT latency on
this CPU beside ORT and PyTorch eager for the same fp32 graph, its counts per call and the
estimated Adreno 630 ms per frame set.

    python benchmarks/export.py [--checkpoint runs/.../policy.ckpt] [--target sm8550]

Prints ONE JSON line. Targets: ort_vs_torch <= 0.5, gflops_per_frame <= 2.5 at 128x256,
quantized p95 error <= 2% of the action range; tinygrad fp32 max <= 1e-4, fp16 p95 <= 1% of the
range, estimated Adreno 630 ms within the 50 ms budget. Without --checkpoint: rl.policy.Policy built
from configs/rl/default.yaml at 128x256, untrained (same graph and FLOPs as a trained one).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from drivegpt.config import compose  # noqa: E402
from drivegpt.export.export import export_module, load_export_module  # noqa: E402


def tinygrad_figures(rep: dict, cfg) -> dict:
    """The 845 (tinygrad) figures of an export report, flat for the JSON line."""
    t = rep.get("tinygrad") or {}
    if not t.get("verified"):
        return {"tinygrad_verified": False, "tinygrad_note": t.get("note")}
    out = {"tinygrad_verified": True, "tinygrad_version": t["version"], "tinygrad_device": t["device"],
           "tinygrad_cpu_ms": t["cpu_ms"], "tinygrad_vs_torch": t["vs_torch"], "tinygrad_vs_ort": t["vs_ort"],
           "tinygrad_fp32_parity_target": float(cfg.export.verify.parity_atol),
           "tinygrad_fp16_p95_frac_target": float(cfg.export.tinygrad.fp16_p95_frac_of_range)}
    for kind, g in t["graphs"].items():
        e = rep["checks"][g["check"]]["errors"]
        a = g["adreno630"]
        out.update({f"tinygrad_{kind}_parity_max": e["max"], f"tinygrad_{kind}_p95_frac": e["p95_frac"],
                    f"tinygrad_{kind}_passed": rep["checks"][g["check"]]["passed"],
                    f"tinygrad_{kind}_kernels": g["kernels"], f"tinygrad_{kind}_gflop": g["flops"] / 1e9,
                    f"tinygrad_{kind}_mbytes": g["bytes"] / 1e6, f"adreno630_{kind}_est_ms": a["ms"],
                    f"adreno630_{kind}_bound": a["bound"]})
    out["adreno630_budget_ms"] = rep["budget_ms"]
    out["openpilot_845_ms"] = {k: rep["reference"][k] for k in ("vision_ms", "policy_ms")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--target", default="sm8550")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--frames", type=int, default=None, help="K (default: rl.policy.context_frames)")
    ap.add_argument("--count", type=int, default=32, help="calibration and held-out windows")
    ap.add_argument("--runs", type=int, default=50, help="timed batch-1 calls")
    ap.add_argument("overrides", nargs="*", help="extra hydra overrides, e.g. export.quantization.per_channel=true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"run_dir={tmp}", f"checkpoint={args.checkpoint or 'none'}", f"target={args.target}",
                     f"data.frame_height={args.height}", f"data.frame_width={args.width}",
                     f"export.calibration.count={args.count}", f"export.verify.count={args.count}",
                     f"export.timing_runs={args.runs}"]
        overrides += args.overrides
        if args.frames:
            overrides.append(f"rl.policy.context_frames={args.frames}")
        cfg = compose("export_policy", overrides)
        if args.checkpoint:
            module, shape = load_export_module(args.checkpoint, cfg)
            policy = "checkpoint"
        else:
            from drivegpt.rl.policy import Policy, policy_config_from_cfg

            torch.manual_seed(0)
            pol = Policy(policy_config_from_cfg(cfg)).eval()
            torch.nn.init.normal_(pol.actor[-1].weight, std=0.3)  # untrained actor starts near 0
            module, shape = pol.export_module(), pol.obs_shape
            policy = "rl.policy.Policy, untrained (configs/rl/default.yaml)"
        t0 = time.perf_counter()
        rep = export_module(module, shape, cfg, Path(tmp) / "export", checkpoint=str(args.checkpoint))
        wall = time.perf_counter() - t0

    checks = rep["checks"]

    def fig(name, key):
        c = checks.get(name)
        return None if c is None else c["errors"][key]

    out = {
        "benchmark": "export", "policy": policy, "frames_shape": rep["frames_shape"], "target": args.target,
        "frames_source": rep["frames"]["heldout_source"], "params": rep["params"],
        "gflops_per_frame": rep["flops"] / 1e9, "gflops_target": 2.5,
        "torch_eager_ms": rep["torch_cpu_ms"], "ort_cpu_ms": rep["ort_cpu_ms"],
        "ort_vs_torch": rep["ort_cpu_ms"] / rep["torch_cpu_ms"], "ort_vs_torch_target": 0.5,
        "fp32_parity_max": fig("fp32 ONNX (ORT CPU) vs PyTorch fp32", "max"),
        "fp16_p95_frac": fig("fp16 ONNX (ORT CPU) vs PyTorch fp32", "p95_frac"),
        "qdq_p95_frac": fig("QDQ (ORT CPU) vs PyTorch fp32", "p95_frac"),
        "qdq_max": fig("QDQ (ORT CPU) vs PyTorch fp32", "max"),
        "htp_p95_frac": fig("EPContext (QNN HTP backend) vs PyTorch fp32", "p95_frac"),
        "htp_max": fig("EPContext (QNN HTP backend) vs PyTorch fp32", "max"),
        "htp_vs_qdq_max": fig("EPContext (QNN HTP backend) vs QDQ (ORT CPU)", "max"),
        "p95_frac_target": float(cfg.export.verify.p95_frac_of_range),
        **tinygrad_figures(rep, cfg),
        "est_ms": {n: {e: v["ms"] for e, v in row.items() if isinstance(v, dict)} for n, row in rep["latency"].items()},
        "artifact_kib": {a["file"]: round(a["bytes"] / 1024, 1) for a in rep["artifacts"]},
        "all_checks_passed": all(c["passed"] for c in checks.values()),
        "export_wall_s": wall, "threads": 1,
        "note": "timings on a shared, contended 2-core host; tinygrad/ORT/torch timed in the same alternating rounds; "
                "Adreno 630 figures are estimates from tinygrad's counts (export.tinygrad.adreno assumptions)",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
