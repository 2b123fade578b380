"""QDQ quantization for the Qualcomm HTP (onnxruntime.quantization, QNN config), fleet-calibrated.

``qnn_preprocess_model`` first (fuses/rewrites ops the way QNN wants), then
``get_qnn_qdq_config`` + ``quantize``: uint16 activations / uint8 weights by default
(uint8/uint8 as an option), calibrated on real frames from the fleet shards.

Float inputs are calibrated like the rest: ``speed``, and for a policy with ``cfg.cruise`` the
``cruise`` set speed (m/s; NaN = unknown), fed from the calibration windows. A NaN has no
quantized value (QuantizeLinear turns it into a finite number, which the graph's known-flag
then reads as a set speed), so the nodes that read the raw cruise input -- views of it, the
comparison that makes its known-flag, the Where that puts 0 in place of an unknown value --
stay float (``nan_guard_nodes``, excluded from quantization; the HTP runs them in fp16). The
Where's output is finite and is the first quantized tensor on that path, its range calibrated
on the windows' known set speeds as speed's is on their speeds.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from drivegpt.export.onnx_export import CRUISE_INPUT, input_arrays, known_cruise
from drivegpt.runs import atomic_path

log = logging.getLogger(__name__)

NAN_INPUTS = (CRUISE_INPUT,)  # float graph inputs that may hold NaN (unknown)
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Cast", "Abs", "Neg"}
MASK_OPS = {"IsNaN", "IsInf", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor"}
QUANT_TYPES = {"uint8": "QUInt8", "uint16": "QUInt16", "int8": "QInt8", "int16": "QInt16"}


class CalibrationError(ValueError):
    """The calibration set is empty or does not match the model's inputs."""


def model_inputs(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Input name -> (static shape, numpy dtype) of an ONNX model."""
    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        out[vi.name] = (shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
    return out


def check_inputs(path: str | os.PathLike, frames: np.ndarray, speed: np.ndarray,
                 what: str = "calibration set", cruise: np.ndarray | None = None) -> None:
    """Raise ``CalibrationError`` naming the input and the problem unless frames/speed (and cruise,
    where the model has that input) fit ``path``. ``cruise`` is ignored by a model without it."""
    if frames is None or len(frames) == 0:
        raise CalibrationError(f"{what} for {path} is empty: no frames to calibrate on "
                               "(check data.shards and export.calibration.count)")
    spec = model_inputs(path)
    for name in ("frames", "speed"):
        if name not in spec:
            raise CalibrationError(f"{path}: model has no input {name!r} (inputs: {sorted(spec)})")
    data = {"frames": frames, "speed": speed, CRUISE_INPUT: cruise}
    for name in spec:
        if name not in data:
            raise CalibrationError(f"{path}: model input {name!r} is none of {list(data)}")
        if data[name] is None:
            raise CalibrationError(f"{what}: model {path} has input {name!r} (the cruise set speed, m/s, "
                                   "NaN = unknown) but no values were given for it")
        shape, dtype = spec[name]
        arr = np.asarray(data[name])
        if arr.dtype != dtype:
            raise CalibrationError(f"{what}, input {name!r}: dtype {arr.dtype}, model {path} expects {dtype}")
        if tuple(arr.shape[1:]) != tuple(shape[1:]):
            raise CalibrationError(
                f"{what}, input {name!r}: samples of shape {list(arr.shape[1:])}, model {path} expects "
                f"{list(shape[1:])} (batch dim first; full array {list(arr.shape)})")
        if len(arr) != len(frames):
            raise CalibrationError(f"{what}: {len(frames)} frame windows but {len(arr)} {name} values")


def nan_guard_nodes(model: onnx.ModelProto, inputs=NAN_INPUTS) -> list[str]:
    """Names of the nodes that read a graph input which may hold NaN (``inputs``) or a view of it:
    they stay float in the QDQ model (``nodes_to_exclude``).

    The raw value may flow through views (Reshape, Cast, Abs, ...) into comparisons (bool masks)
    and into the Where that replaces it where a mask says unknown; the Where's output is finite.
    Any other use would carry NaN into the quantized network: that raises ``CalibrationError``
    naming the node (the policy's state features must mask the input first).
    """
    tainted = {vi.name for vi in model.graph.input if vi.name in inputs}
    masks: set[str] = set()
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        reads = [x for x in node.input if x in tainted]
        if node.op_type in MASK_OPS and (reads or any(x in masks for x in node.input)):
            masks.update(node.output)
        if not reads:
            continue
        label = f"{node.op_type} node {node.name or '?'}"
        if not node.name:
            raise CalibrationError(f"{label} reads NaN-capable input(s) {reads} but has no name to exclude it by")
        names.append(node.name)
        if node.op_type in VIEW_OPS:
            tainted.update(node.output)
        elif node.op_type == "Where" and node.input[0] in masks and node.input[0] not in tainted:
            continue  # unknown values swapped for the other branch: the output is finite
        elif node.op_type not in MASK_OPS:
            raise CalibrationError(
                f"{label} reads {reads}, which may hold NaN (inputs {list(inputs)}: NaN = unknown), without a "
                "Where on a mask of it first: NaN cannot be quantized (the known-flag/Where must come first)")
    return names


def _drop_preprocess_hint(record: logging.LogRecord) -> bool:
    """onnxruntime.quantization suggests generic pre-processing; qnn_preprocess_model already ran."""
    return "pre-processing" not in record.getMessage()


SPEED_RANGE_MS = 40.0  # the speeds a deployed policy is calibrated for (m/s; 144 km/h)


def quantize_qdq(fp32_path: str | os.PathLike, out_path: str | os.PathLike, frames: np.ndarray,
                 speed: np.ndarray, activation_type: str = "uint16", weight_type: str = "uint8",
                 calibrate_method: str = "MinMax", per_channel: bool = False,
                 cruise: np.ndarray | None = None, speed_sweep: bool = True) -> Path:
    """Write the QDQ model for the HTP to ``out_path``, calibrated on (frames, speed[, cruise]).

    frames uint8 [N,K,H,W,3], speed float32 [N,1], cruise float32 [N,1] (m/s, NaN = unknown; needed
    when the model has a ``cruise`` input, ignored otherwise): N calibration samples fed one at a time.
    ``speed_sweep`` (default): each window is fed a second time with a speed from an even spread over
    0-``SPEED_RANGE_MS`` m/s. MinMax ranges come from what calibration saw, and a policy whose accel
    closes the gap to a desired speed (``rl.policy.longitudinal: speed``) reaches its saturated
    accels only at speeds far from the logged ones: calibrated on 128 logged windows alone, the
    proof's QDQ graph clipped its accel to [-0.78, 0.95] (with the spread: [-1, 0.98]). Ranges the
    frames set (its curvature there) need enough windows instead: ``export.calibration.count``.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    check_inputs(fp32_path, frames, speed, cruise=cruise)
    for label, name in (("activation_type", activation_type), ("weight_type", weight_type)):
        if name not in QUANT_TYPES:
            raise ValueError(f"export.quantization.{label}={name!r}: expected one of {sorted(QUANT_TYPES)}")
    inputs = input_arrays(list(model_inputs(fp32_path)), frames, speed, cruise, str(fp32_path))
    if CRUISE_INPUT in inputs:
        if not known_cruise(inputs[CRUISE_INPUT]).any():
            log.warning("no calibration window has a known cruise set speed (all NaN: not logged): the QDQ "
                        "graph's range for it is [0, 0], so a known set speed reads as 0 on the quantized graph "
                        "(and the held-out check, on windows like these, cannot see it)")

    if speed_sweep:  # every window again at speeds spread over the deploy range (see the docstring)
        n = len(frames)
        sweep = np.linspace(0.0, SPEED_RANGE_MS, n, dtype=np.float32)[np.random.default_rng(0).permutation(n)]
        inputs = {k: np.concatenate([v, sweep[:, None].astype(v.dtype)] if k == "speed" else [v, v])
                  for k, v in inputs.items()}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(len(inputs["frames"])))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {k: v[i:i + 1] for k, v in inputs.items()}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="qdq-", dir=out_path.parent) as tmp:
        src = Path(tmp) / "preprocessed.onnx"
        if not qnn_preprocess_model(str(fp32_path), str(src)):
            src = Path(fp32_path)
        config = get_qnn_qdq_config(
            str(src), Reader(),
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            activation_type=getattr(QuantType, QUANT_TYPES[activation_type]),
            weight_type=getattr(QuantType, QUANT_TYPES[weight_type]),
            per_channel=bool(per_channel),
        )
        config.extra_options = {**(config.extra_options or {}), "CalibTensorRangeSymmetric": False}
        guard = nan_guard_nodes(onnx.load(str(src), load_external_data=False))  # NaN stays float
        config.nodes_to_exclude = sorted(set(config.nodes_to_exclude or []) | set(guard))
        root = logging.getLogger()
        root.addFilter(_drop_preprocess_hint)
        try:
            with atomic_path(out_path) as tmp_out:
                quantize(str(src), str(tmp_out), config)
        finally:
            root.removeFilter(_drop_preprocess_hint)
    onnx.checker.check_model(str(out_path))
    return out_path
