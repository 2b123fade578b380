"""QDQ quantization for the Qualcomm HTP (onnxruntime.quantization, QNN config), fleet-calibrated.

``qnn_preprocess_model`` first (fuses/rewrites ops the way QNN wants), then
``get_qnn_qdq_config`` + ``quantize``: uint16 activations / uint8 weights by default
(uint8/uint8 as an option), calibrated on real frames from the fleet shards.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from drivegpt.runs import atomic_path

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
                 what: str = "calibration set") -> None:
    """Raise ``CalibrationError`` naming the input and the problem unless frames/speed fit ``path``."""
    if frames is None or len(frames) == 0:
        raise CalibrationError(f"{what} for {path} is empty: no frames to calibrate on "
                               "(check data.shards and export.calibration.count)")
    spec = model_inputs(path)
    for name, arr in (("frames", frames), ("speed", speed)):
        if name not in spec:
            raise CalibrationError(f"{path}: model has no input {name!r} (inputs: {sorted(spec)})")
        shape, dtype = spec[name]
        arr = np.asarray(arr)
        if arr.dtype != dtype:
            raise CalibrationError(f"{what}, input {name!r}: dtype {arr.dtype}, model {path} expects {dtype}")
        if tuple(arr.shape[1:]) != tuple(shape[1:]):
            raise CalibrationError(
                f"{what}, input {name!r}: samples of shape {list(arr.shape[1:])}, model {path} expects "
                f"{list(shape[1:])} (batch dim first; full array {list(arr.shape)})")
    if len(speed) != len(frames):
        raise CalibrationError(f"{what}: {len(frames)} frame windows but {len(speed)} speeds")


def _drop_preprocess_hint(record: logging.LogRecord) -> bool:
    """onnxruntime.quantization suggests generic pre-processing; qnn_preprocess_model already ran."""
    return "pre-processing" not in record.getMessage()


def quantize_qdq(fp32_path: str | os.PathLike, out_path: str | os.PathLike, frames: np.ndarray,
                 speed: np.ndarray, activation_type: str = "uint16", weight_type: str = "uint8",
                 calibrate_method: str = "MinMax", per_channel: bool = False) -> Path:
    """Write the QDQ model for the HTP to ``out_path``, calibrated on (frames, speed).

    frames uint8 [N,K,H,W,3], speed float32 [N,1]: N calibration samples fed one at a time.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    check_inputs(fp32_path, frames, speed)
    for label, name in (("activation_type", activation_type), ("weight_type", weight_type)):
        if name not in QUANT_TYPES:
            raise ValueError(f"export.quantization.{label}={name!r}: expected one of {sorted(QUANT_TYPES)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(len(frames)))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {"frames": frames[i:i + 1], "speed": speed[i:i + 1]}

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
        root = logging.getLogger()
        root.addFilter(_drop_preprocess_hint)
        try:
            with atomic_path(out_path) as tmp_out:
                quantize(str(src), str(tmp_out), config)
        finally:
            root.removeFilter(_drop_preprocess_hint)
    onnx.checker.check_model(str(out_path))
    return out_path
