"""The Snapdragon 845 path, the way openpilot runs there: tinygrad on the Adreno 630 GPU.

The 845 (comma two / three / 3X) has no Hexagon HTP, so the QNN context binary cannot run on it;
openpilot runs its driving models on the 845's GPU through tinygrad (``DEV=QCOM``). This module
loads the exported fp32 and fp16 ONNX graphs with tinygrad's own ONNX runner
(``tinygrad.nn.onnx.OnnxRunner``) under ``TinyJit``, by default on tinygrad's CPU backend
(``DEV=CPU``, compiled with clang): the same graph, the same op implementations and the same JIT
that run on the device, only the kernels are compiled for x86 instead of the Adreno (compiling
Adreno kernels needs the device). From that run it takes:

- the actions, for parity against PyTorch fp32 on held-out frames;
- what tinygrad counts for one replayed JIT call (``GlobalCounters``): kernels, FLOPs, bytes;
- an Adreno 630 latency estimate from those counts (``adreno_estimate``; an estimate, stated as one);
- ``write_device_kit``: ``run_on_comma.py`` + ``README_sd845.md`` + held-out sample frames with
  their PyTorch actions, to run and check the artifact on a comma device.

An op tinygrad has no implementation for raises ``TinygradUnsupportedOpsError`` naming each op
and node before anything runs; an op that fails while the graph is built, or a kernel that fails
to compile or run, raises ``TinygradRunError`` naming the op and node, or the graph output.
tinygrad is imported lazily: ``drivegpt.export`` imports without it (``tinygrad_status`` says why not).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from drivegpt.runs import atomic_write_text

# openpilot's modeld compile settings on the comma device (tinygrad's openpilot compile script):
# the Adreno runtime, image (texture) buffers for conv weights/activations, no local memory,
# one command queue for the whole JIT (no batching into several graphs).
DEVICE_ENV = {"DEV": "QCOM", "IMAGE": "2", "NOLOCALS": "1", "JIT_BATCH_SIZE": "0"}
RUNNER = "run_on_comma.py"
DEVICE_README = "README_sd845.md"
SAMPLE = "sd845_sample.npz"


class TinygradUnsupportedOpsError(RuntimeError):
    """The ONNX graph has ops tinygrad's ONNX runner does not implement (named with their nodes)."""


class TinygradRunError(RuntimeError):
    """tinygrad failed building an op or compiling/running a kernel (names the op and node, or the output)."""


def tinygrad_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("tinygrad")
    except Exception:  # noqa: BLE001 (not installed)
        return None


def tinygrad_status(device: str = "CPU") -> tuple[bool, str]:
    """(usable, why): tinygrad installed and its ``device`` backend runs a kernel here."""
    v = tinygrad_version()
    if v is None:
        return False, "tinygrad is not installed (pip install 'drivegpt[tinygrad]')"
    try:
        from tinygrad import Context, Tensor

        with Context(DEV=device):
            if (Tensor([1.0, 2.0], device=device) * 2).tolist() != [2.0, 4.0]:
                return False, f"tinygrad {v} {device} backend gives wrong results"
    except Exception as e:  # noqa: BLE001 (any backend failure is the answer)
        hint = ""
        if device == "CPU":
            import shutil

            if shutil.which("clang") is None:
                hint = " (its CPU backend compiles with clang: apt-get install clang)"
        return False, f"tinygrad {v} {device} backend unusable{hint}: {type(e).__name__}: {e}"
    return True, f"tinygrad {v}, {device} backend"


def _node_labels(path: str | os.PathLike) -> list[str]:
    """'Op (node NAME -> output)' per node, in graph order (tinygrad's parser keeps no node names)."""
    model = onnx.load(str(path), load_external_data=False)
    return [f"{n.op_type} (node {n.name or '?'} -> {', '.join(n.output)})" for n in model.graph.node]


def _runner_class():
    from tinygrad.nn.onnx import OnnxRunner

    class NamedOnnxRunner(OnnxRunner):
        """OnnxRunner whose op errors name the ONNX node (op, node name, outputs) and the file."""

        def __init__(self, path):
            super().__init__(path)
            self.path = Path(path)
            self.labels = _node_labels(path)
            self._i = 0

        def unsupported(self) -> list[str]:
            missing = []
            for label, node in zip(self.labels, self.graph_nodes, strict=True):
                try:
                    super()._select_op(node.op, node.opset_id)
                except NotImplementedError as e:
                    missing.append(f"{label}: {e}")
            return missing

        def __call__(self, inputs, **kw):
            self._i = 0
            return super().__call__(inputs, **kw)

        def _select_op(self, op, required_opset):
            label = self.labels[self._i] if self._i < len(self.labels) else op
            self._i += 1
            fn = super()._select_op(op, required_opset)

            def run(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except Exception as e:
                    raise TinygradRunError(f"tinygrad could not run {label} of {self.path.name}: "
                                           f"{type(e).__name__}: {e}") from e
            return run

    return NamedOnnxRunner


class TinygradPolicy:
    """An exported policy graph (frames uint8 + speed [+ cruise] -> action) run by tinygrad under TinyJit.

    Inputs are fed by the graph's names (``onnx_export.input_arrays``): ``cruise`` (m/s, NaN =
    unknown) is needed where the graph has it and ignored where it has not.

    ``device="CPU"`` is tinygrad's clang backend, ``threads`` its kernel threads (1: comparable
    with one-thread ORT and PyTorch timings). Calls 1-2 trace and capture the JIT, later calls
    replay the captured kernels, which is what runs on the device every frame.
    """

    def __init__(self, path: str | os.PathLike, device: str = "CPU", threads: int | None = 1):
        from tinygrad import Context, TinyJit

        self.path, self.device = Path(path), device
        # PARALLEL=0: compile in this process (no pool of spawned compiler processes on a shared host)
        self.context = {"DEV": device, "PARALLEL": 0,
                        **({"NUM_CPU_THREADS": int(threads)} if device == "CPU" and threads else {})}
        with Context(**self.context):
            self.runner = _runner_class()(self.path)
        missing = self.runner.unsupported()
        if missing:
            raise TinygradUnsupportedOpsError(
                f"{self.path.name}: tinygrad's ONNX runner has no implementation for "
                f"{len(missing)} node(s): " + "; ".join(missing))
        self.input_names = list(self.runner.graph_inputs)
        self.output = self.runner.graph_outputs[0]
        self.jit = TinyJit(self._forward)
        self.calls = 0

    def _forward(self, *inputs):
        out = self.runner(dict(zip(self.input_names, inputs)))[self.output]
        try:
            return out.realize()
        except TinygradRunError:
            raise
        except Exception as e:
            raise TinygradRunError(f"tinygrad could not compute output {self.output!r} of {self.path.name} "
                                   f"on {self.device}: {type(e).__name__}: {e}") from e

    def __call__(self, frames: np.ndarray, speed: np.ndarray, cruise: np.ndarray | None = None) -> np.ndarray:
        """Action [1, 2] float32 for one frame set (frames uint8 [1,K,H,W,3], speed float32 [1,1],
        cruise float32 [1,1] where the graph has it)."""
        from tinygrad import Context, Tensor

        from drivegpt.export.onnx_export import input_arrays

        inputs = input_arrays(self.input_names, frames, speed, cruise, self.path.name)
        with Context(**self.context):
            out = self.jit(*(Tensor(np.ascontiguousarray(v)) for v in inputs.values()))
            try:
                got = out.numpy()
            except Exception as e:
                raise TinygradRunError(f"tinygrad could not read output {self.output!r} of {self.path.name} "
                                       f"on {self.device}: {type(e).__name__}: {e}") from e
        self.calls += 1
        return got.astype(np.float32)

    def run(self, frames: np.ndarray, speed: np.ndarray, cruise: np.ndarray | None = None) -> np.ndarray:
        """Actions float32 [N, 2], one frame set per call like the device (JIT replays after call 2)."""
        c = (lambda i: None) if cruise is None else (lambda i: cruise[i:i + 1])  # noqa: E731
        return np.concatenate([self(frames[i:i + 1], speed[i:i + 1], c(i)) for i in range(len(frames))])

    def counts(self, frames: np.ndarray, speed: np.ndarray, cruise: np.ndarray | None = None) -> dict:
        """What tinygrad counts for one replayed JIT call (``GlobalCounters``): kernels, FLOPs, bytes.

        FLOPs count every ALU op in the kernels (a multiply-add is 2, elementwise ops count too);
        bytes are what the kernels load and store, each buffer once.
        """
        from tinygrad.helpers import GlobalCounters

        c = None if cruise is None else cruise[:1]
        while self.calls < 2:  # make sure the next call is a replay of the captured JIT
            self(frames[:1], speed[:1], c)
        GlobalCounters.reset()
        self(frames[:1], speed[:1], c)
        return {"kernels": int(GlobalCounters.kernel_count), "flops": int(GlobalCounters.global_ops),
                "bytes": int(GlobalCounters.global_mem), "device": self.device}


def adreno_estimate(counts: dict, fp16: bool, a: dict, budget_ms: float) -> dict:
    """Estimated ms per call on the Adreno 630 from tinygrad's counts (a roofline plus launch cost).

    ms = kernels x kernel_overhead_us + max(FLOPs / (peak x utilisation), bytes / (bandwidth x
    mem_utilisation)); fp32 runs at ``fp32_rate`` of the fp16 peak. Kernel counts are the CPU
    backend's: the Adreno build (IMAGE=2, other fusions) can differ.
    """
    peak = float(a["gpu_fp16_gflops"]) * (1.0 if fp16 else float(a["fp32_rate"]))
    compute = 1e3 * counts["flops"] / (peak * 1e9 * float(a["utilisation"]))
    memory = 1e3 * counts["bytes"] / (float(a["mem_gbs"]) * 1e9 * float(a["mem_utilisation"]))
    launch = counts["kernels"] * float(a["kernel_overhead_us"]) / 1e3
    ms = launch + max(compute, memory)
    parts = {"launch": launch, "compute": compute, "memory": memory}
    return {"ms": ms, "within_budget": ms <= budget_ms, "budget_ms": float(budget_ms), **{f"{k}_ms": v for k, v in parts.items()},
            "bound": max(parts, key=parts.get), "peak_gflops": peak}


def write_device_kit(out_dir: Path, frames: np.ndarray, speed: np.ndarray, ref: np.ndarray, figures: dict,
                     cruise: np.ndarray | None = None) -> list[Path]:
    """run_on_comma.py, README_sd845.md and sd845_sample.npz (held-out frames, speeds, cruise set
    speeds when the graph reads them, + PyTorch fp32 actions)."""
    out_dir = Path(out_dir)
    sample = out_dir / SAMPLE
    tmp = out_dir / f".{SAMPLE}.tmp.npz"
    extra = {} if cruise is None else {"cruise": cruise}
    np.savez_compressed(tmp, frames=frames, speed=speed, **extra, action_torch_fp32=ref)
    os.replace(tmp, sample)
    runner = atomic_write_text(out_dir / RUNNER, RUNNER_SCRIPT)
    readme = atomic_write_text(out_dir / DEVICE_README, device_readme(figures))
    for p in (sample, runner, readme):
        os.chmod(p, 0o755 if p == runner else 0o644)
    return [runner, readme, sample]


def device_readme(f: dict) -> str:
    env = " ".join(f"{k}={v}" for k, v in DEVICE_ENV.items())
    L = ["# DriveGPT policy on the Snapdragon 845 (comma two / 3 / 3X): tinygrad on the Adreno 630", "",
         "The 845 has no Hexagon HTP, so the QNN context binary cannot run on it. openpilot runs its driving",
         "models on the 845's GPU through tinygrad; so does this artifact:", "",
         "| file | what |", "|---|---|",
         "| `policy_fp16.onnx` | the policy graph, fp16 weights/activations (uint8 frames + fp32 speed [+ fp32 cruise set "
         "speed, NaN = unknown] in, fp32 action out; manifest.json lists the inputs): the one to run |",
         "| `policy_fp32.onnx` | the same graph in fp32 (full precision, about half the GPU rate) |",
         f"| `{RUNNER}` | loads a graph with `tinygrad.nn.onnx.OnnxRunner`, runs it under `TinyJit`, times it, checks parity |",
         f"| `{SAMPLE}` | {f.get('sample_n', '?')} held-out frame sets with their PyTorch fp32 actions |", "",
         "## Run it on the device", "",
         "Copy this directory to the device (e.g. `/data/drivegpt`) and run, with the tinygrad that openpilot",
         f"ships (or `pip install 'tinygrad=={f.get('tinygrad', '0.14.0')}'`):", "",
         "```bash",
         f"cd /data/drivegpt && {env} python3 {RUNNER} --model policy_fp16.onnx --check {SAMPLE}",
         "```", "",
         f"`{RUNNER}` sets these defaults itself (openpilot's modeld compile settings): `DEV=QCOM` is tinygrad's",
         "Adreno runtime; `IMAGE=2` keeps conv weights and activations in image (texture) buffers, which the Adreno's",
         "texture path reads fastest; `NOLOCALS=1` compiles without local memory; `JIT_BATCH_SIZE=0` submits the",
         "whole JIT as one command queue. openpilot also sets `FLOAT16=1` for its fp32 graph (fp16 storage in",
         "convolutions); `policy_fp16.onnx` is fp16 already. It prints the median ms per call against the 50 ms",
         "frame budget and, with `--check`, the action error against PyTorch fp32 (fp16: p95 <= 1% of the",
         "action range; fp32: max <= 1e-4). `--save policy_qcom.pkl` pickles the captured JIT (openpilot ships its",
         "models this way: the device then loads kernels without compiling).", "",
         "## Verified at export (x86, tinygrad CPU backend)", "",
         "Compiling Adreno kernels needs the device, so the export runs the same graphs with the same ONNX runner",
         "and JIT on tinygrad's CPU backend (`DEV=CPU`, clang) on held-out frames:", ""]
    L += f.get("table", [])
    L += ["", "The Adreno 630 figures are estimates from tinygrad's own counts (kernels, FLOPs, bytes per call) and",
          "stated assumptions (see the device report); openpilot's reference on the same GPU: vision ~18 ms +",
          "policy ~7 ms inside the 50 ms frame. Measure on the device with the command above.", ""]
    return "\n".join(L)


RUNNER_SCRIPT = '''#!/usr/bin/env python3
"""Run the DriveGPT policy with tinygrad on a comma device's Adreno 630 GPU (DEV=QCOM), as openpilot does.

  python3 run_on_comma.py                                   # policy_fp16.onnx: median ms per call vs 50 ms
  python3 run_on_comma.py --check sd845_sample.npz          # + action error vs PyTorch fp32 (held-out frames)
  python3 run_on_comma.py --model policy_fp32.onnx --check sd845_sample.npz
  DEV=CPU python3 run_on_comma.py --check sd845_sample.npz  # anywhere else (tinygrad CPU backend needs clang)

Environment defaults (openpilot's modeld compile settings; set them yourself to override):
DEV=QCOM IMAGE=2 NOLOCALS=1 JIT_BATCH_SIZE=0. Written by `drivegpt export policy`; reads manifest.json.
"""
import os

for _k, _v in {"DEV": "QCOM", "IMAGE": "2", "NOLOCALS": "1", "JIT_BATCH_SIZE": "0"}.items():
    os.environ.setdefault(_k, _v)
if os.environ["DEV"].split(":")[0] != "QCOM":  # image buffers are an Adreno feature
    for _k in ("IMAGE", "NOLOCALS"):
        if os.environ[_k] == {"IMAGE": "2", "NOLOCALS": "1"}[_k]:
            os.environ.pop(_k)

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from tinygrad import Device, GlobalCounters, Tensor, TinyJit  # noqa: E402
from tinygrad.nn.onnx import OnnxRunner  # noqa: E402

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="policy_fp16.onnx")
    ap.add_argument("--check", default=None,
                    help="npz with the graph's inputs (frames, speed[, cruise]) and action_torch_fp32")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget-ms", type=float, default=50.0)
    ap.add_argument("--save", default=None, help="pickle the captured JIT here")
    args = ap.parse_args()
    manifest = json.loads((HERE / "manifest.json").read_text())
    spec = {i["name"]: i for i in manifest["inputs"]}
    model = Path(args.model) if Path(args.model).is_absolute() else HERE / args.model
    runner = OnnxRunner(model)
    out_name = manifest["outputs"][0]["name"]
    names = list(runner.graph_inputs)
    jit = TinyJit(lambda *xs: runner(dict(zip(names, xs)))[out_name].realize())

    def call(inputs):
        return jit(*[Tensor(np.ascontiguousarray(inputs[n])) for n in names]).numpy()

    if args.check:
        data = np.load(args.check)
        inputs = {n: data[n] for n in names}
    else:
        rng = np.random.default_rng(0)
        inputs = {n: (rng.integers(0, 256, spec[n]["shape"]).astype(np.uint8) if spec[n]["dtype"] == "uint8"
                      else np.full(spec[n]["shape"], 20.0, np.float32)) for n in names}
    n = len(inputs["frames"]) if args.check else 1
    one = lambda i: {k: v[i:i + 1] for k, v in inputs.items()} if args.check else inputs  # noqa: E731
    t0 = time.perf_counter()
    got = [call(one(i % n)) for i in range(max(n, 3))][:n]  # calls 1-2 trace and capture, then replay
    first_s = time.perf_counter() - t0
    times = []
    for i in range(args.runs):
        t = time.perf_counter()
        call(one(i % n))
        times.append(time.perf_counter() - t)
    GlobalCounters.reset()
    call(one(0))
    report = {"device": Device.DEFAULT, "model": model.name, "env": {k: os.environ.get(k) for k in
              ("DEV", "IMAGE", "NOLOCALS", "JIT_BATCH_SIZE", "FLOAT16")},
              "median_ms": 1e3 * float(np.median(times)), "budget_ms": args.budget_ms,
              "kernels": GlobalCounters.kernel_count, "gflop": GlobalCounters.global_ops / 1e9,
              "mbytes": GlobalCounters.global_mem / 1e6, "compile_and_capture_s": first_s}
    report["within_budget"] = report["median_ms"] <= args.budget_ms
    if args.check:
        err = np.abs(np.concatenate(got).astype(np.float64) - data["action_torch_fp32"].astype(np.float64))
        rng_ = float(manifest.get("action_range", 2.0))
        report.update({"n": int(n), "action_err_max": float(err.max()), "action_err_p95": float(np.quantile(err, 0.95)),
                       "p95_frac_of_range": float(np.quantile(err, 0.95)) / rng_})
        fp16 = "fp16" in model.name
        report["parity_passed"] = (report["p95_frac_of_range"] <= 0.01) if fp16 else (report["action_err_max"] <= 1e-4)
    if args.save:
        with open(args.save, "wb") as f:
            pickle.dump(jit, f)
    print(json.dumps(report))
    if args.check and not report["parity_passed"]:
        raise SystemExit(f"parity check failed for output {out_name!r}: {report}")


if __name__ == "__main__":
    main()
'''
