"""``drivegpt export policy checkpoint=PATH target=NAME``: one command from a policy checkpoint
to verified device artifacts and a report.

The artifacts and checks are ``drivegpt.export.export.export_module``; this stage writes
``run_dir/metrics.json`` and ``device_report.md``, and raises when a verification failed.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from drivegpt.export.export import export_module, load_export_module
from drivegpt.runs import atomic_write_text, mark_done, write_metrics
from drivegpt.stages.common import bind_fps


CHECK_KEYS = {  # metrics.json group per comparison (the pipeline's headline is qnn.action_err_p95)
    "fp32 ONNX (ORT CPU) vs PyTorch fp32": "fp32",
    "fp16 ONNX (ORT CPU) vs PyTorch fp32": "fp16",
    "QDQ (ORT CPU) vs PyTorch fp32": "qdq",
    "EPContext (QNN HTP backend) vs PyTorch fp32": "qnn",
    "EPContext (QNN HTP backend) vs QDQ (ORT CPU)": "qnn_vs_qdq",
}


def check_key(name: str) -> str:
    """metrics.json group of a check: fp32, fp16, qdq, qnn, qnn_vs_qdq, tinygrad_fp32, tinygrad_fp16."""
    if name.startswith("tinygrad "):
        return "tinygrad_" + name.split()[1]
    return CHECK_KEYS.get(name, name)


def run(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    bind_fps(cfg)
    module, shape = load_export_module(cfg.checkpoint, cfg)
    out_dir = run_dir / "export"
    rep = export_module(module, shape, cfg, out_dir, checkpoint=str(cfg.checkpoint))
    failed = [k for k, c in rep["checks"].items() if not c["passed"]]
    metrics = {"params": rep["params"], "gflops": rep["flops"] / 1e9, "ort_cpu_ms": rep["ort_cpu_ms"],
               "torch_cpu_ms": rep["torch_cpu_ms"], "ort_vs_torch": rep["ort_cpu_ms"] / rep["torch_cpu_ms"],
               "target": rep["target"]["name"], "export_dir": str(out_dir), "failed_checks": failed,
               "htp_skipped": rep["htp_skipped"],  # why the HTP artifact was not built (export.skip_htp), or None
               "est_ms": {n: {e: v["ms"] for e, v in row.items() if isinstance(v, dict)}
                          for n, row in rep["latency"].items()}}
    tiny = rep.get("tinygrad") or {}
    metrics["tinygrad"] = {"verified": bool(tiny.get("verified")), "note": tiny.get("note")}
    if tiny.get("verified"):
        metrics["tinygrad"].update({
            "cpu_ms": tiny["cpu_ms"], "vs_torch": tiny["vs_torch"], "vs_ort": tiny["vs_ort"],
            **{kind: {"kernels": g["kernels"], "flops": g["flops"], "bytes": g["bytes"],
                      "adreno630_est_ms": g["adreno630"]["ms"], "within_budget": g["adreno630"]["within_budget"]}
               for kind, g in tiny["graphs"].items()}})
    for name, c in rep["checks"].items():
        e = c["errors"]
        metrics[check_key(name)] = {"action_err_p95": e["p95"], "action_err_max": e["max"],
                                               "action_err_mean": e["mean"], "p95_frac": e["p95_frac"],
                                               "passed": c["passed"]}
    write_metrics(run_dir, metrics)
    atomic_write_text(run_dir / "device_report.md", (out_dir / "report.md").read_text())  # shown by `drivegpt report`
    if failed:
        raise RuntimeError(f"export verification failed ({out_dir / 'report.md'}): " + "; ".join(
            f"{k}: output 'action' error max {rep['checks'][k]['errors']['max']:.3g}, p95 "
            f"{100 * rep['checks'][k]['errors']['p95_frac']:.3g}% of range; {rep['checks'][k]['criterion']} not met"
            for k in failed))
    mark_done(run_dir, {"export_dir": str(out_dir)})
    return metrics
