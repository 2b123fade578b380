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


CHECK_KEYS = {  # metrics.json group per comparison (the pipeline's headline is qnn.action_err_p95)
    "fp32 ONNX (ORT CPU) vs PyTorch fp32": "fp32",
    "fp16 ONNX (ORT CPU) vs PyTorch fp32": "fp16",
    "QDQ (ORT CPU) vs PyTorch fp32": "qdq",
    "EPContext (QNN HTP backend) vs PyTorch fp32": "qnn",
    "EPContext (QNN HTP backend) vs QDQ (ORT CPU)": "qnn_vs_qdq",
}


def run(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
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
    for name, c in rep["checks"].items():
        e = c["errors"]
        metrics[CHECK_KEYS.get(name, name)] = {"action_err_p95": e["p95"], "action_err_max": e["max"],
                                               "action_err_mean": e["mean"], "p95_frac": e["p95_frac"],
                                               "passed": c["passed"]}
    write_metrics(run_dir, metrics)
    atomic_write_text(run_dir / "device_report.md", (out_dir / "report.md").read_text())  # shown by `drivegpt report`
    if failed:
        raise RuntimeError(f"export verification failed ({out_dir / 'report.md'}): " + "; ".join(
            f"{k}: {rep['checks'][k]['criterion']} not met" for k in failed))
    mark_done(run_dir, {"export_dir": str(out_dir)})
    return metrics
