"""ONNX export of the on-device policy graph (uint8 frames + speed [+ cruise] -> action), fp32 and fp16.

The exported graph is the whole thing that runs in the car: uint8 -> float preprocessing, the
vision trunk, the policy head with the information bottleneck at its mean. Static shapes,
batch 1, opset 21 (QNN's 16-bit Q/DQ needs it), IR version pinned to one onnxruntime reads.

Inputs: ``frames`` uint8 [1,K,H,W,3] and ``speed`` f32 [1,1] (m/s), and for a policy with
``cfg.cruise`` a third, ``cruise`` f32 [1,1]: the cruise set speed in m/s, NaN when unknown
(the graph turns it into a zero feature with its known-flag off). ``input_names(module)`` says
which; every runner here feeds the graph's inputs by name (``input_arrays``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from drivegpt.runs import atomic_write_bytes

OPSET = 21
IR_VERSION = 10  # opset 21 needs IR >= 10; newer onnx writes IR that older onnxruntime refuses
INPUT_NAMES = ("frames", "speed")  # every policy graph's inputs, in this order
CRUISE_INPUT = "cruise"  # the third input of a policy with cfg.cruise: set speed m/s, NaN = unknown
OUTPUT_NAMES = ("action",)


def known_cruise(cruise) -> np.ndarray:
    """Bool mask of the set speeds a policy reads as known: > 0 (NaN and 0 are unknown), the same
    rule as ``Policy.cruise_features``' known-flag."""
    return np.asarray(cruise, np.float64) > 0


def has_cruise(module: nn.Module) -> bool:
    """Whether an export module reads the cruise set speed: its policy's ``cfg.cruise``
    (``Policy.export_module()`` holds the policy as ``.policy``; a bare ``Policy`` works too)."""
    policy = getattr(module, "policy", module)
    return bool(getattr(getattr(policy, "cfg", None), "cruise", False))


def input_names(module: nn.Module) -> tuple[str, ...]:
    """The graph's input names for ``module``: frames, speed (+ cruise with ``cfg.cruise``)."""
    return INPUT_NAMES + ((CRUISE_INPUT,) if has_cruise(module) else ())


def example_inputs(frames_shape: tuple[int, int, int, int], cruise: bool = False) -> tuple[torch.Tensor, ...]:
    """Batch-1 example inputs: frames uint8 [1,K,H,W,3], speed float32 [1,1] (+ cruise float32 [1,1])."""
    k, h, w, c = frames_shape
    if c != 3:
        raise ValueError(f"frames_shape {frames_shape}: last dim must be 3 (RGB)")
    args = (torch.zeros(1, k, h, w, 3, dtype=torch.uint8), torch.zeros(1, 1, dtype=torch.float32))
    return args + ((torch.zeros(1, 1, dtype=torch.float32),) if cruise else ())


def input_arrays(names, frames: np.ndarray, speed: np.ndarray, cruise: np.ndarray | None = None,
                 where: str = "model") -> dict[str, np.ndarray]:
    """{input name: array [N, ...]} for a graph/module with inputs ``names``, in that order.

    ``cruise`` [N,1] (m/s, NaN = unknown) is fed only where ``names`` has it, and must be given
    there (the held-out and calibration windows always carry it); an input none of these is for
    raises naming it."""
    data = {"frames": frames, "speed": speed, CRUISE_INPUT: cruise}
    out = {}
    for name in names:
        if name not in data:
            raise ValueError(f"{where}: input {name!r} is not one of {list(data)}")
        if data[name] is None:
            what = " (the cruise set speed, m/s, NaN = unknown)" if name == CRUISE_INPUT else ""
            raise ValueError(f"{where} has input {name!r}{what} but no values were given for it")
        out[name] = data[name]
    return out


def export_onnx(module: nn.Module, frames_shape: tuple[int, int, int, int], path: str | os.PathLike,
                opset: int = OPSET) -> Path:
    """Export ``module`` (frames uint8 [1,K,H,W,3], speed float32 [1,1] [, cruise float32 [1,1]]
    -> action [1,2]) to ``path``; the inputs are ``input_names(module)``.

    One self-contained file (no external data); onnx.checker (full_check) must pass.
    """
    module = module.eval()
    names = input_names(module)
    args = example_inputs(frames_shape, cruise=CRUISE_INPUT in names)
    with torch.no_grad():
        out = module(*args)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 2):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"export module must return an action tensor [1, 2], got {got}")
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # per-pass INFO chatter under hydra's logging
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        program = torch.onnx.export(
            module, args, None, dynamo=True, external_data=False, opset_version=opset,
            input_names=list(names), output_names=list(OUTPUT_NAMES), verbose=False,
        )
    model = program.model_proto
    got = tuple(i.name for i in model.graph.input)
    if got != names:  # the exporter drops inputs the graph never reads
        raise ValueError(f"exported graph has inputs {list(got)}, expected {list(names)} "
                         "(does the module read every input it is given?)")
    model.ir_version = min(model.ir_version, IR_VERSION)
    model.producer_name = "drivegpt-export"
    hoist_input_casts(model.graph)
    onnx.checker.check_model(model, full_check=True)
    return atomic_write_bytes(path, model.SerializeToString())


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fp16 weights and activations for GPU delegates; I/O types kept (uint8 frames, fp32 speed/cruise/action)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    half.ir_version = min(half.ir_version, IR_VERSION)
    _toposort(half.graph)  # the converter appends its I/O casts at the end of the node list
    onnx.checker.check_model(half, full_check=True)
    return atomic_write_bytes(dst, half.SerializeToString())


LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def hoist_input_casts(graph: onnx.GraphProto) -> int:
    """Move uint8 -> float Casts at graph inputs above pure layout ops (exact: they only move data).

    ``frames.float()`` after a rearrange exports as input -> Transpose/Reshape on uint8 -> Cast;
    the HTP cannot run layout ops on raw uint8 tensors, but runs them on quantized ones, which
    is what they become once the Cast comes first. Returns the number of casts moved.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    vinfo = {v.name: v for v in graph.value_info}
    moved = 0
    for inp in graph.input:
        if inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        chain, name = [], inp.name
        while len(consumers.get(name, [])) == 1 and consumers[name][0].op_type in LAYOUT_OPS:
            chain.append(consumers[name][0])
            name = chain[-1].output[0]
        users = consumers.get(name, [])
        if not chain or len(users) != 1 or users[0].op_type != "Cast":
            continue
        cast = users[0]
        cast_out, new_in = cast.output[0], f"{inp.name}_as_float"
        cast.input[0], cast.output[0] = inp.name, new_in
        chain[0].input[0] = new_in
        for node in chain:  # their outputs are float now
            if node.output[0] in vinfo:
                vinfo[node.output[0]].type.tensor_type.elem_type = onnx.helper.get_attribute_value(
                    next(a for a in cast.attribute if a.name == "to"))
        for node in consumers.get(cast_out, []):
            for i, x in enumerate(node.input):
                if x == cast_out:
                    node.input[i] = chain[-1].output[0]
        for out in graph.output:
            if out.name == cast_out:
                out.name = chain[-1].output[0]
        moved += 1
    if moved:
        _toposort(graph)
    return moved


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically in place (Kahn's algorithm, stable)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or dangling inputs at node {rest[0].name!r}")
        pending = rest
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def cpu_session(path: str | os.PathLike, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(session, frames: np.ndarray, speed: np.ndarray, cruise: np.ndarray | None = None) -> np.ndarray:
    """Actions float32 [N,2] for frames uint8 [N,K,H,W,3], speed float32 [N,1] (and cruise float32
    [N,1], m/s, NaN = unknown, where the graph has that input), one frame set at a time."""
    inputs = input_arrays([i.name for i in session.get_inputs()], frames, speed, cruise, "ONNX graph")
    out = [session.run(None, {k: v[i:i + 1] for k, v in inputs.items()})[0] for i in range(len(frames))]
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def torch_actions(module: nn.Module, frames: np.ndarray, speed: np.ndarray,
                  cruise: np.ndarray | None = None) -> np.ndarray:
    """PyTorch fp32 reference actions [N,2], batch 1 like the device (``cruise`` fed where the
    module reads it: ``has_cruise``)."""
    module = module.eval()
    inputs = input_arrays(input_names(module), frames, speed, cruise, "export module")
    out = [module(*(torch.from_numpy(v[i:i + 1]) for v in inputs.values())).numpy() for i in range(len(frames))]
    return np.concatenate(out).astype(np.float32)
