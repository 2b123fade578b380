"""From a policy checkpoint to verified device artifacts and a report (``drivegpt export policy
checkpoint=PATH target=NAME``, stage ``drivegpt.stages.export_policy``).

``export_module`` writes ``run_dir/export/``: policy_fp32.onnx (CPU), policy_fp16.onnx (GPU: tinygrad
on the 845's Adreno 630, verified on tinygrad's CPU backend), policy_qdq.onnx (QNN QDQ, a16w8 by
default), policy_<target>_ctx.onnx (EPContext with the embedded HTP context binary, for targets with
an HTP), the 845 device kit (run_on_comma.py, README_sd845.md, sd845_sample.npz), manifest.json,
report.json/.md; the stage adds run_dir/metrics.json and raises on verification failures.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from drivegpt.export import onnx_export as ox
from drivegpt.export import qnn, report
from drivegpt.export import tinygrad_gpu as tg
from drivegpt.export.frames import get_windows
from drivegpt.export.quantize import check_inputs, quantize_qdq
from drivegpt.export.verify import action_errors
from drivegpt.rl.checkpoint import load_policy, read_checkpoint
from drivegpt.sim.vehicle import ACTION_SCALE, VehicleParams

log = logging.getLogger(__name__)


class HTPUnavailableError(RuntimeError):
    """The target asks for a QNN HTP context binary and the QNN HTP backend cannot be loaded here."""


def htp_availability(target: dict, skip_htp: bool) -> str | None:
    """None when the target's HTP artifact can be built (or it has no HTP); else why not, when the
    config says to export without it (``export.skip_htp=true``). Raises otherwise: an export asked
    for an HTP target never drops the context binary and its checks silently."""
    if not target.get("has_htp", False):
        return None
    ok, why = qnn.qnn_status()
    if ok:
        return None
    if not skip_htp:
        raise HTPUnavailableError(
            f"target={target['name']!r} has a Hexagon HTP, but the QNN HTP backend cannot be loaded here ({why}), "
            "so its context binary cannot be compiled or verified. Install it (pip install -e '.[qnn]'), "
            "export for a target without HTP (target=sdm845), or set export.skip_htp=true to export "
            "without the HTP artifact and its checks (the report and metrics then say so).")
    log.warning("SKIPPING the QNN HTP context binary and its checks for target %s (export.skip_htp=true): %s",
                target["name"], why)
    return why


class NotAPolicyError(ValueError):
    """The checkpoint given to the export stage is not a DriveGPT policy."""


def load_export_module(path: str | Path, cfg: DictConfig | None = None):
    """(export module, frames_shape (K,H,W,3)) from a policy checkpoint (file or run directory).

    A checkpoint of another kind (tokenizer, world model, ...) or an unreadable file raises
    ``NotAPolicyError`` naming the file and the key.
    """
    try:
        ckpt = read_checkpoint(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"checkpoint={path}: {e}") from None
    except ValueError as e:
        raise NotAPolicyError(f"checkpoint={path}: {e} (export needs a policy checkpoint from "
                              "`drivegpt train policy`)") from None
    policy = load_policy(path)
    shape = tuple(int(x) for x in ckpt["obs_shape"])
    return policy.export_module().eval(), shape


def _ms(fns: dict, n: int, rounds: int = 5) -> dict:
    """Median wall time in ms of one call of each fn, timed in alternating rounds so that load
    from other jobs on a shared host lands on every contender alike (median: robust to spikes)."""
    times: dict = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (allocator, weight reorders, ORT's first-run planning)
        for _ in range(3):
            fn()
    per_round = max(1, -(-max(n, 1) // rounds))
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def toolchain_versions() -> dict:
    """Versions that built the artifacts (a QNN context binary must match the device's QNN runtime)."""
    import onnx
    import onnxruntime

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        from onnxruntime_qnn import build_and_package_info as qnn_info

        out.update({"onnxruntime_qnn": qnn_info.__version__, "qnn_sdk": getattr(qnn_info, "qnn_version", None)})
    except ImportError:
        out["onnxruntime_qnn"] = None
    out["tinygrad"] = tg.tinygrad_version()  # the device's tinygrad should match (run_on_comma.py)
    return out


def cpu_latency_ms(module, session, inputs: dict, runs: int, tinygrad=None) -> dict:
    """{"torch", "ort"[, "tinygrad"]}: ms per batch-1 call of the same fp32 graph, each on one thread
    (PyTorch eager, ONNX Runtime CPU, and tinygrad's replayed TinyJit on its CPU backend when given)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = [torch.from_numpy(v) for v in inputs.values()]
        fns = {"torch": lambda: module(*args), "ort": lambda: session.run(None, inputs)}
        if tinygrad is not None:
            fns["tinygrad"] = lambda: tinygrad(*inputs.values())
        with torch.inference_mode():
            return _ms(fns, runs)
    finally:
        torch.set_num_threads(threads)


def resolve_target(e: DictConfig, name: str) -> str:
    """The targets-table name for ``target=`` (``export.aliases``: sd845 -> sdm845)."""
    aliases = dict(e.get("aliases") or {})
    name = str(aliases.get(name, name))
    if name not in e.targets:
        raise ValueError(f"target={name!r}: not in the targets table (configs/export/default.yaml): "
                         f"{sorted(e.targets)} (aliases: {aliases})")
    return name


def verify_tinygrad(files: dict, held, ref: np.ndarray, check, e: DictConfig, budget_ms: float,
                    gpu_is_tinygrad: bool) -> dict:
    """The 845 path: each ONNX graph in ``files`` ({"fp32": path, "fp16": path}) run by tinygrad's ONNX
    runner under TinyJit on its CPU backend, checked against PyTorch fp32; tinygrad's counts per call and
    the Adreno 630 estimate from them. Returns the report's ``tinygrad`` section (with the fp32 runner
    under "_fp32_runner" for the latency comparison)."""
    t = e.tinygrad
    ok, why = tg.tinygrad_status(str(t.device))
    if not ok:
        if gpu_is_tinygrad:  # the target's own GPU runtime: cannot ship it unverified
            raise RuntimeError(f"target's GPU artifact runs on tinygrad, which cannot run here: {why}")
        return {"verified": False, "note": f"not verified: {why}"}
    adreno = OmegaConf.to_container(t.adreno, resolve=True)
    sec = {"verified": True, "status": why, "version": tg.tinygrad_version(), "device": str(t.device),
           "adreno_assumptions": adreno, "graphs": {}}
    for kind, path in files.items():
        log.info("tinygrad %s: OnnxRunner + TinyJit on %s (%s)", kind, t.device, path.name)
        runner = tg.TinygradPolicy(path, device=str(t.device), threads=1)
        acts = runner.run(held.frames, held.speed, held.cruise)
        name = f"tinygrad {kind} ({t.device}, TinyJit) vs PyTorch fp32"
        if kind == "fp32":
            check(name, acts, ref, "max", float(e.verify.parity_atol), f"max <= {e.verify.parity_atol}")
        else:
            bound = float(t.fp16_p95_frac_of_range)
            check(name, acts, ref, "p95_frac", bound, f"p95 <= {bound:.0%} of range")
        counts = runner.counts(held.frames, held.speed, held.cruise)
        sec["graphs"][kind] = {"file": path.name, "check": name, **counts,
                               "adreno630": tg.adreno_estimate(counts, kind == "fp16", adreno, budget_ms)}
        if kind == "fp32":
            sec["_fp32_runner"] = runner
    return sec


def controls_spec(module) -> dict:
    """What the car's controls must apply to the exported action, outside the graph (empty: nothing):
    the policy's jerk envelope (``rl.policy.max_jerk``), which reads the car's measured accel."""
    cfg = getattr(getattr(module, "policy", module), "cfg", None)
    max_jerk = getattr(cfg, "max_jerk", None)
    if max_jerk is None:
        return {}
    tau = VehicleParams().tau_accel
    return {"max_jerk": float(max_jerk), "tau_accel": tau,
            "rule": f"at each decision clip the desired accel (action[1] x {ACTION_SCALE[1]:g} m/s^2) to the "
                    f"car's measured accel +- {float(max_jerk) * tau:.3g} m/s^2 (max_jerk {float(max_jerk):g} m/s^3 x "
                    f"tau_accel {tau:g} s; drivegpt.sim.vehicle.limit_jerk)"}


def export_module(module, frames_shape, cfg: DictConfig, out_dir: Path, checkpoint: str = "-") -> dict:
    """Everything after loading: artifacts, verification, manifest, report. Returns the report dict."""
    e = cfg.export
    out_dir.mkdir(parents=True, exist_ok=True)
    tname = resolve_target(e, str(cfg.target))
    target = {"name": tname, **OmegaConf.to_container(e.targets[tname], resolve=True)}
    htp_skipped = htp_availability(target, bool(e.get("skip_htp", False)))  # fails here, before any work
    action_range = float(e.action_range)

    log.info("export: frames %s, target %s -> %s", list(frames_shape), tname, out_dir)
    calib = get_windows(cfg, "train", int(e.calibration.count), frames_shape)
    held = get_windows(cfg, "val", int(e.verify.count), frames_shape)
    log.info("frames: %d calibration (%s), %d held-out (%s)", len(calib.frames), calib.source,
             len(held.frames), held.source)
    cruise = ox.has_cruise(module)  # the policy reads the cruise set speed: a third graph input
    ref = ox.torch_actions(module, held.frames, held.speed, held.cruise)

    artifacts, checks, raw = [], {}, {}

    def check(name, pred, against, bound_key, bound, criterion):
        errs = action_errors(pred, against, action_range)
        raw[name] = np.abs(pred - against).reshape(-1)
        checks[name] = {"errors": errs, "passed": bool(errs[bound_key] <= bound), "criterion": criterion}

    log.info("[1/4] ONNX export (opset %s) + fp16", e.opset)
    fp32 = ox.export_onnx(module, frames_shape, out_dir / "policy_fp32.onnx", opset=int(e.opset))
    artifacts.append({"file": fp32.name, "kind": "fp32", "runtime": "ONNX Runtime CPU (any CPU, incl. 845 Kryo)"})
    check_inputs(fp32, held.frames, held.speed, what="held-out set", cruise=held.cruise)
    cpu = ox.cpu_session(fp32)
    check("fp32 ONNX (ORT CPU) vs PyTorch fp32", ox.run_session(cpu, held.frames, held.speed, held.cruise), ref,
          "max", float(e.verify.parity_atol), f"max <= {e.verify.parity_atol}")

    if e.fp16:
        fp16 = ox.to_fp16(fp32, out_dir / "policy_fp16.onnx")
        artifacts.append({"file": fp16.name, "kind": "fp16",
                          "runtime": "tinygrad DEV=QCOM (Adreno 630 GPU on the 845; run_on_comma.py), other GPU delegates"})
        check("fp16 ONNX (ORT CPU) vs PyTorch fp32",
              ox.run_session(ox.cpu_session(fp16), held.frames, held.speed, held.cruise),
              ref, "p95_frac", float(e.verify.p95_frac_of_range), f"p95 <= {e.verify.p95_frac_of_range:.0%} of range")

    tiny = {"verified": False, "note": "disabled (export.tinygrad.enabled=false)"}
    if e.tinygrad.enabled:
        log.info("[1b/4] tinygrad (the 845's GPU runtime) on its %s backend", e.tinygrad.device)
        graphs = {"fp32": fp32, **({"fp16": out_dir / "policy_fp16.onnx"} if e.fp16 else {})}
        tiny = verify_tinygrad(graphs, held, ref, check, e, float(e.budget_ms),
                               gpu_is_tinygrad=target.get("gpu_runtime") == "tinygrad")

    q = e.quantization
    log.info("[2/4] QDQ quantization a=%s w=%s", q.activation_type, q.weight_type)
    qdq = quantize_qdq(fp32, out_dir / "policy_qdq.onnx", calib.frames, calib.speed,
                       activation_type=str(q.activation_type), weight_type=str(q.weight_type),
                       calibrate_method=str(q.calibrate_method), per_channel=bool(q.per_channel),
                       cruise=calib.cruise)
    artifacts.append({"file": qdq.name, "kind": f"qdq a{q.activation_type[-2:]}w{q.weight_type[-1:]}",
                      "runtime": "QNN EP (compiles on device) / ORT CPU"})
    qdq_actions = ox.run_session(ox.cpu_session(qdq), held.frames, held.speed, held.cruise)
    p95_bound = float(e.verify.p95_frac_of_range)
    check("QDQ (ORT CPU) vs PyTorch fp32", qdq_actions, ref, "p95_frac", p95_bound, f"p95 <= {p95_bound:.0%} of range")

    htp_note = None
    if not target.get("has_htp", False):
        htp_note = (f"{target.get('soc', tname)} has no Hexagon HTP (the HTP starts with v68 SoCs), so no "
                    "context binary: deploy policy_fp16.onnx on its GPU"
                    + (" with tinygrad (run_on_comma.py)" if target.get("gpu_runtime") == "tinygrad" else "")
                    + " or policy_fp32.onnx on its CPU.")
    elif htp_skipped is not None:
        htp_note = (f"SKIPPED (export.skip_htp=true): no context binary and no HTP checks for "
                    f"{target.get('soc', tname)}: {htp_skipped}")
    else:
        log.info("[3/4] QNN HTP compile: htp_arch v%s soc_model %s", target["htp_arch"], target["soc_model"])
        ctx = qnn.compile_epcontext(qdq, out_dir / f"policy_{tname}_ctx.onnx", target)
        artifacts.append({"file": ctx.name, "kind": "EPContext (embedded QNN HTP context binary)",
                          "runtime": f"QNN HTP v{target['htp_arch']} (soc_model {target['soc_model']})"})
        htp = ox.run_session(qnn.htp_session(ctx, target), held.frames, held.speed, held.cruise)
        check("EPContext (QNN HTP backend) vs PyTorch fp32", htp, ref, "p95_frac", p95_bound,
              f"p95 <= {p95_bound:.0%} of range")
        check("EPContext (QNN HTP backend) vs QDQ (ORT CPU)", htp, qdq_actions, "p95_frac", p95_bound,
              f"p95 <= {p95_bound:.0%} of range")
        htp_note = ("compiled and run on the QNN HTP backend shipped in onnxruntime-qnn "
                    "(on x86 a simulator: accuracy is real, speed is not)")

    log.info("[4/4] report: FLOPs, activation peak, latency")
    example = ox.example_inputs(frames_shape, cruise=cruise)
    flops = report.count_flops(module, example)
    one = {k: v[:1] for k, v in ox.input_arrays(ox.input_names(module), held.frames, held.speed,
                                                 held.cruise).items()}
    tiny_fp32 = tiny.pop("_fp32_runner", None)
    ms = cpu_latency_ms(module, cpu, one, int(e.timing_runs), tinygrad=tiny_fp32)
    torch_ms, ort_ms = ms["torch"], ms["ort"]
    support = []
    if tiny.get("verified"):
        tiny.update({"cpu_ms": ms["tinygrad"], "vs_torch": ms["tinygrad"] / torch_ms, "vs_ort": ms["tinygrad"] / ort_ms})
        n = min(int(e.tinygrad.sample_count), len(held.frames))
        support = [p.name for p in tg.write_device_kit(out_dir, held.frames[:n], held.speed[:n], ref[:n], {
            "sample_n": n, "tinygrad": tiny["version"], "table": report.tinygrad_table(tiny, checks)},
            cruise=held.cruise[:n] if cruise else None)]

    io_spec = {
        "inputs": [{"name": "frames", "shape": [1, *frames_shape], "dtype": "uint8",
                    "normalisation": "raw RGB 0..255, K frames oldest first at the training stride; "
                                     "scaling/normalisation is inside the graph"},
                   {"name": "speed", "shape": [1, 1], "dtype": "float32", "normalisation": "m/s, raw"}]
        + ([{"name": ox.CRUISE_INPUT, "shape": [1, 1], "dtype": "float32",
             "normalisation": "m/s, raw; NaN = unknown"}] if cruise else []),
        "outputs": [{"name": "action", "shape": [1, 2], "dtype": "float32",
                     "normalisation": "normalized [desired curvature, desired accel] in [-1, 1]; "
                                      "sim.vehicle.denormalize_action gives 1/m and m/s^2"}],
    }
    controls = controls_spec(module)
    if controls:  # what the car's controls apply to the graph's action, outside it
        io_spec["controls"] = controls
    manifest_extra = {"opset": int(e.opset), "target": target, "checkpoint": checkpoint,
                      "toolchain": toolchain_versions(),
                      "frame_rate_hz": float(cfg.data.fps) / float(cfg.data.stride), "action_range": action_range}
    manifest = report.write_manifest(out_dir, artifacts, io_spec, manifest_extra, support_files=support)
    rows = report.read_json(manifest)["artifacts"]

    rep = {
        "checkpoint": checkpoint, "target": target, "frames_shape": list(frames_shape),
        "frames": {"heldout_source": held.source, "heldout_split": held.split, "heldout_n": len(held.frames),
                   "calib_source": calib.source, "calib_split": calib.split, "calib_n": len(calib.frames),
                   **({"heldout_cruise_known": int(ox.known_cruise(held.cruise).sum()),
                         "calib_cruise_known": int(ox.known_cruise(calib.cruise).sum())}
                      if cruise else {})},
        "inputs": [i["name"] for i in io_spec["inputs"]], "controls": controls,
        "params": report.count_params(module), "flops": flops, "macs": flops // 2,
        "activation_peak_bytes": report.activation_peak_bytes(fp32),
        "artifacts": rows, "op_histograms": {a["file"]: report.op_histogram(out_dir / a["file"]) for a in rows},
        "checks": checks, "htp_note": htp_note, "htp_skipped": htp_skipped, "budget_ms": float(e.budget_ms),
        "reference": OmegaConf.to_container(e.reference, resolve=True),
        "utilisation": OmegaConf.to_container(e.utilisation, resolve=True),
        "latency": report.latency_estimates(flops, OmegaConf.to_container(e.targets, resolve=True),
                                            OmegaConf.to_container(e.utilisation, resolve=True), float(e.budget_ms)),
        "ort_cpu_ms": ort_ms, "torch_cpu_ms": torch_ms, "tinygrad": tiny, "support_files": support,
        "deployment": report.deployment_table(tname, OmegaConf.to_container(e.targets, resolve=True), rows, tiny),
    }
    report.plot_errors(raw, action_range, float(e.verify.p95_frac_of_range), out_dir / "errors.png")
    report.write_report(out_dir, rep)
    for name, c in checks.items():
        log.info("%-48s p95 %.3g%% of range, max %.3g  %s", name, 100 * c["errors"]["p95_frac"],
                 c["errors"]["max"], "pass" if c["passed"] else "FAIL")
    return rep
