"""Device report (JSON + Markdown) and the artifact manifest.

Figures: parameters, MACs/FLOPs per frame set (one forward pass, batch 1), activation memory
peak (liveness over the ONNX graph, fp32), artifact sizes, op histograms, and estimated
latency per target from FLOPs and published peak throughput at a stated utilisation, against
the 50 ms frame budget with openpilot's own figures on the 845 as the reference line.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from drivegpt.runs import atomic_write_json, atomic_write_text, read_json
from drivegpt.runs import atomic_path

MANIFEST = "manifest.json"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@torch.no_grad()
def count_flops(module: nn.Module, example: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass (matmul/conv counted as 2 per MAC; elementwise ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        module.eval()(*example)
    return int(counter.get_total_flops())


def op_histogram(path: str | os.PathLike) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items(), key=lambda kv: (-kv[1], kv[0])))


def activation_peak_bytes(path: str | os.PathLike) -> int:
    """Peak bytes of live intermediate tensors executing the graph in node order (no reuse tricks)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=False)
    g = model.graph
    sizes = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize if t.elem_type else 4
        sizes[vi.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    consts = {i.name for i in g.initializer}
    last_use = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            last_use[name] = i
    live = {i.name: sizes.get(i.name, 0) for i in g.input}
    peak = sum(live.values())
    outputs = {o.name for o in g.output}
    for i, node in enumerate(g.node):
        for name in node.output:
            if name not in consts:
                live[name] = sizes.get(name, 0)
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= i and name not in outputs:
                del live[name]
    return int(peak)


def latency_estimates(flops: int, targets: dict, utilisation: dict, budget_ms: float) -> dict:
    """ms per forward pass on each target's engines: FLOPs / (peak * utilisation)."""
    engines = {"gpu_fp16": "gpu_fp16_gflops", "cpu_fp32": "cpu_fp32_gflops", "htp_int8": "htp_int8_tops"}
    out = {}
    for name, t in targets.items():
        row = {"soc": t.get("soc", name), "has_htp": bool(t.get("has_htp", False))}
        for engine, key in engines.items():
            peak = t.get(key)
            if peak is None:
                continue
            ops_per_s = float(peak) * (1e12 if key.endswith("tops") else 1e9) * float(utilisation[engine])
            if engine == "htp_int8":  # 16-bit activations run at about half the int8 rate
                ops_per_s *= float(utilisation.get("htp_a16_factor", 0.5))
            ms = 1e3 * flops / ops_per_s
            row[engine] = {"ms": ms, "within_budget": ms <= budget_ms, "peak": float(peak),
                           "unit": "TOPS" if key.endswith("tops") else "GFLOPS",
                           "utilisation": float(utilisation[engine])}
        out[name] = row
    return out


def write_manifest(export_dir: str | os.PathLike, artifacts: list[dict], io_spec: dict, extra: dict,
                   support_files: list[str] = ()) -> Path:
    """manifest.json: every artifact with sha256/bytes, I/O names/shapes/dtypes, normalisation; the
    files that go with them to a device (runner script, its README, sample frames) under ``support_files``."""
    export_dir = Path(export_dir)
    rows = []
    for a in artifacts:
        p = export_dir / a["file"]
        os.chmod(p, 0o644)  # atomic writes create 0600 temp files; artifacts get copied to devices
        rows.append({**a, "sha256": sha256(p), "bytes": p.stat().st_size})
    support = [{"file": f, "sha256": sha256(export_dir / f), "bytes": (export_dir / f).stat().st_size}
               for f in support_files]
    return atomic_write_json(export_dir / MANIFEST, {"artifacts": rows, "support_files": support, **io_spec, **extra})


def verify_manifest(export_dir: str | os.PathLike) -> list[str]:
    """Problems found checking the manifest against the files ([] when every hash matches)."""
    export_dir = Path(export_dir)
    manifest = read_json(export_dir / MANIFEST)
    problems = []
    for a in manifest.get("artifacts", []) + manifest.get("support_files", []):
        p = export_dir / a["file"]
        if not p.exists():
            problems.append(f"{p}: listed in {MANIFEST} but missing")
        elif sha256(p) != a["sha256"]:
            problems.append(f"{p}: sha256 differs from {MANIFEST}")
    return problems


def tinygrad_table(tiny: dict, checks: dict) -> list[str]:
    """Markdown rows: per graph, tinygrad's parity, counts per call and the Adreno 630 estimate."""
    L = ["| graph | parity vs PyTorch fp32 (held-out) | kernels / call | MFLOP / call | MB / call "
         "| est. Adreno 630 ms (launch + max(compute, memory)) | within 50 ms |", "|---|---|---|---|---|---|---|"]
    for kind, g in tiny.get("graphs", {}).items():
        c = checks.get(g["check"], {})
        er = c.get("errors", {})
        a = g["adreno630"]
        L.append(f"| `{g['file']}` | max {_fmt(er.get('max'))}, p95 {100 * er.get('p95_frac', float('nan')):.3g}% of range "
                 f"({'pass' if c.get('passed') else 'FAIL'}: {c.get('criterion', '-')}) | {g['kernels']} "
                 f"| {g['flops'] / 1e6:.3g} | {g['bytes'] / 1e6:.3g} | {a['ms']:.3g} ({a['launch_ms']:.2g} + "
                 f"max({a['compute_ms']:.2g}, {a['memory_ms']:.2g}); {a['bound']}-bound) "
                 f"| {'yes' if a['within_budget'] else 'no'} |")
    return L


def deployment_table(target: str, targets: dict, artifacts: list[dict], tiny: dict) -> list[dict]:
    """Which file goes on which device: SoC -> artifact -> runtime (and what verified it here)."""
    files = {a["file"] for a in artifacts}
    tver = ("verified here on tinygrad's CPU backend (same ONNX runner + TinyJit)" if tiny.get("verified")
            else f"tinygrad {tiny.get('note', 'not verified')}")
    rows = []
    for name, t in targets.items():
        if t.get("gpu_runtime") == "tinygrad":
            rows.append({"soc": f"{t.get('soc', name)} [{name}]", "engine": f"{t.get('gpu', 'GPU')} GPU",
                         "artifact": "policy_fp16.onnx (fp16; policy_fp32.onnx for full precision) + run_on_comma.py",
                         "runtime": "tinygrad DEV=QCOM IMAGE=2 (as openpilot)", "verified": tver})
    htp = [n for n, t in targets.items() if t.get("has_htp")]
    ctx = f"policy_{target}_ctx.onnx"
    rows.append({"soc": "8-series with a Hexagon HTP [" + ", ".join(htp) + "]", "engine": "Hexagon HTP",
                 "artifact": (f"{ctx} (compiled for {target} only; re-export with target=NAME for the others)"
                              if ctx in files else "policy_<target>_ctx.onnx: export with target=NAME")
                 + "; policy_qdq.onnx (the QNN EP compiles it on the device)",
                 "runtime": "ONNX Runtime + onnxruntime-qnn (QNN HTP EP)",
                 "verified": ("QNN HTP backend (x86 simulator)" if ctx in files else "QDQ on ORT CPU")})
    rows.append({"soc": "any", "engine": "CPU", "artifact": "policy_fp32.onnx", "runtime": "ONNX Runtime CPU EP",
                 "verified": "ORT CPU vs PyTorch fp32"})
    return rows


def _fmt(x, nd=3):
    return "-" if x is None else (f"{x:.{nd}g}" if isinstance(x, float) else str(x))


def markdown(r: dict) -> str:
    """The human-readable device report."""
    L = [f"# DriveGPT device export: {r['target']['soc']} ({r['target']['name']})", ""]
    extra = " + ".join(r.get("inputs", ["frames", "speed"])[1:]).replace("cruise", "cruise (set speed, NaN = unknown)")
    f = r["frames"]
    known = (f"; known cruise set speed in {f['heldout_cruise_known']}/{f['heldout_n']} held-out and "
             f"{f['calib_cruise_known']}/{f['calib_n']} calibration windows" if "heldout_cruise_known" in f else "")
    L += [f"Checkpoint `{r['checkpoint']}`; inputs frames uint8 {r['frames_shape']} + {extra}; "
          f"frames for verification: {f['heldout_source']} ({f['heldout_n']} held-out windows, "
          f"split `{f['heldout_split']}`), calibration: {f['calib_n']} windows "
          f"({f['calib_source']}, split `{f['calib_split']}`){known}.", ""]
    if r.get("controls"):
        L += [f"Controls outside the graph (the car applies them; `controls` in the manifest): "
              f"jerk envelope, {r['controls']['rule']}.", ""]
    L += ["## Model", "", "| figure | value |", "|---|---|",
          f"| parameters | {r['params']:,} |", f"| MACs per frame set | {r['macs']:,} |",
          f"| FLOPs per frame set | {r['flops']:,} ({r['flops'] / 1e9:.3f} GFLOP) |",
          f"| activation peak (fp32, node order) | {r['activation_peak_bytes'] / 2**20:.2f} MiB |", ""]
    L += ["## Artifacts", "", "| file | kind | runs on | size |", "|---|---|---|---|"]
    L += [f"| `{a['file']}` | {a['kind']} | {a['runtime']} | {a['bytes'] / 1024:.1f} KiB |" for a in r["artifacts"]]
    L += ["", "## Accuracy (|action error|, normalized actions in [-1, 1])", "",
          "| comparison | n | mean | p50 | p95 | p99 | max | p95 / range | check |", "|---|---|---|---|---|---|---|---|---|"]
    for name, c in r["checks"].items():
        e = c["errors"]
        L.append(f"| {name} | {e['n']} | {_fmt(e['mean'])} | {_fmt(e['p50'])} | {_fmt(e['p95'])} | {_fmt(e['p99'])} "
                 f"| {_fmt(e['max'])} | {100 * e['p95_frac']:.2f}% | {'pass' if c['passed'] else 'FAIL'} ({c['criterion']}) |")
    L += ["", "![action error CDF](errors.png)"]
    if r.get("htp_note"):
        L += ["", f"QNN HTP: {r['htp_note']}"]
    ref = r["reference"]
    L += ["", f"## Estimated latency per forward pass (budget {r['budget_ms']} ms per frame at 20 Hz)", "",
          f"Reference line: {ref['name']}: vision {ref['vision_ms']} ms + policy {ref['policy_ms']} ms "
          f"= {ref['vision_ms'] + ref['policy_ms']} ms. Estimates are FLOPs / (published peak x utilisation); "
          f"utilisation assumed: {r['utilisation']}.", "",
          "| target | SoC | HTP | GPU fp16 ms | CPU fp32 ms | HTP (a16w8) ms |", "|---|---|---|---|---|---|"]
    for name, row in r["latency"].items():
        cells = [f"{row[e]['ms']:.3g}{'' if row[e]['within_budget'] else ' (over)'}" if e in row else "-"
                 for e in ("gpu_fp16", "cpu_fp32", "htp_int8")]
        L.append(f"| {name} | {row['soc']} | {'yes' if row['has_htp'] else 'no'} | " + " | ".join(cells) + " |")
    htp = [f"{row['soc']} ({n})" for n, row in r["latency"].items() if row["has_htp"]]
    no_htp = [f"{row['soc']} ({n})" for n, row in r["latency"].items() if not row["has_htp"]]
    L += ["", f"SoCs with a Hexagon Tensor Processor (v68 and later) run the QNN context binary: {', '.join(htp)}. "
          f"Without an HTP: {', '.join(no_htp) or 'none'}; the 845's Hexagon 685 has no HTP, so it runs "
          "`policy_fp16.onnx` on the GPU or `policy_fp32.onnx` on the CPU."]
    L += ["", "## Which file goes on which device", "", "| SoC | engine | artifact | runtime | verified |",
          "|---|---|---|---|---|"]
    L += [f"| {d['soc']} | {d['engine']} | {d['artifact']} | {d['runtime']} | {d['verified']} |"
          for d in r.get("deployment", [])]
    tiny = r.get("tinygrad") or {}
    L += ["", "## Snapdragon 845: tinygrad (Adreno 630 GPU, as openpilot)", ""]
    if tiny.get("verified"):
        a = tiny["adreno_assumptions"]
        L += [f"{tiny['status']}: the ONNX graphs run by `tinygrad.nn.onnx.OnnxRunner` under `TinyJit` on tinygrad's "
              f"{tiny['device']} backend, held-out frames; counts are tinygrad's `GlobalCounters` for one replayed JIT "
              "call (the Adreno build, with IMAGE=2, fuses differently).", ""]
        L += tinygrad_table(tiny, r["checks"])
        L += ["", f"Adreno 630 estimate = kernels x {a['kernel_overhead_us']} us + max(FLOPs / ({a['gpu_fp16_gflops']} "
              f"GFLOPS fp16 peak (fp32 x{a['fp32_rate']}) x {a['utilisation']}), bytes / ({a['mem_gbs']} GB/s x "
              f"{a['mem_utilisation']})): assumptions, not a measurement. Reference line: {ref['name']}: vision "
              f"{ref['vision_ms']} ms + policy {ref['policy_ms']} ms in the {r['budget_ms']} ms frame.", "",
              f"tinygrad JIT on this CPU (fp32 graph, 1 thread): {tiny['cpu_ms']:.3g} ms per call = "
              f"{tiny['vs_torch']:.2f}x PyTorch eager, {tiny['vs_ort']:.2f}x ONNX Runtime (same graph, same rounds).", "",
              "On the device: copy this directory and run `python3 run_on_comma.py --check sd845_sample.npz` "
              "(see `README_sd845.md`)."]
    else:
        L += [f"tinygrad: {tiny.get('note', 'not run')}"]
    L += ["", "## Op histogram", "", "| artifact | ops |", "|---|---|"]
    for f, h in r["op_histograms"].items():
        L.append(f"| `{f}` | " + ", ".join(f"{k} x{v}" for k, v in h.items()) + " |")
    L += ["", f"Measured CPU latency here (x86, batch 1, 1 thread each, contended host): "
          f"{_fmt(r.get('ort_cpu_ms'))} ms fp32 ONNX vs {_fmt(r.get('torch_cpu_ms'))} ms PyTorch eager.", ""]
    return "\n".join(L)


def plot_errors(errors: dict[str, np.ndarray], action_range: float, bound_frac: float,
                path: str | os.PathLike) -> Path:
    """errors.png: CDF of |action error| (as % of the action range) per comparison, with the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, err in errors.items():
        x = np.sort(100 * np.maximum(err, 1e-9) / action_range)
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=name)
    ax.axvline(100 * bound_frac, color="k", ls="--", lw=1, label=f"bound {100 * bound_frac:g}% (at p95)")
    ax.axhline(0.95, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("|action error| (% of action range, log)")
    ax.set_ylabel("fraction of held-out actions")
    ax.set_title("Device artifacts vs PyTorch fp32 on held-out frames")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.chmod(path, 0o644)
    return path


def write_report(export_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    export_dir = Path(export_dir)
    return (atomic_write_json(export_dir / "report.json", report),
            atomic_write_text(export_dir / "report.md", markdown(report)))
