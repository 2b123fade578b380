"""Compile a QDQ model into an EPContext model (embedded QNN HTP context binary) and run it.

onnxruntime-qnn >= 2 is a plugin execution provider: its library is registered with
onnxruntime once per process, then added to a session for the devices it exposes. CPU
fallback is disabled, so a graph the HTP cannot run fully fails at compile time; the error
names the unsupported ops (parsed from the EP's own log, which is the only place it lists them).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

from drivegpt.runs import atomic_path

EP_NAME = "QNNExecutionProvider"
_registered = False


class UnsupportedOpsError(RuntimeError):
    """The HTP cannot run part of the graph (and CPU fallback is disabled)."""


def qnn_status() -> tuple[bool, str]:
    """(available, reason): whether onnxruntime-qnn's HTP backend can be loaded here."""
    try:
        devices = register_qnn()
    except Exception as e:  # noqa: BLE001 - the reason is what callers report
        return False, f"onnxruntime-qnn unavailable: {type(e).__name__}: {e}"
    if not devices:
        return False, "onnxruntime-qnn registered but exposes no QNN devices"
    return True, "ok"


def register_qnn():
    """Register the QNN plugin EP library (once) and return its ``OrtEpDevice``s."""
    global _registered
    import onnxruntime as ort
    import onnxruntime_qnn

    if not _registered:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        _registered = True
    return [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]


def provider_options(target: dict) -> dict[str, str]:
    """QNN EP options for a targets-table entry (needs has_htp, htp_arch, soc_model)."""
    name = target.get("name", "?")
    if not target.get("has_htp", False):
        raise ValueError(f"target {name!r} has no Hexagon HTP (HTP starts with v68 SoCs): "
                         "use its GPU fp16 / CPU fp32 ONNX artifacts instead of a QNN context binary")
    for key in ("htp_arch", "soc_model"):
        if target.get(key) is None:
            raise ValueError(f"target {name!r}: missing {key!r} in the targets table")
    return {"backend_type": "htp", "htp_arch": str(int(target["htp_arch"])),
            "soc_model": str(int(target["soc_model"])), "htp_performance_mode": "burst"}


def _session_options(target: dict, extra: dict[str, str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 2  # keep warnings+errors: the EP lists unsupported nodes at error level
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for k, v in (extra or {}).items():
        so.add_session_config_entry(k, v)
    devices = register_qnn()
    if not devices:
        raise RuntimeError("onnxruntime-qnn exposes no QNNExecutionProvider device")
    so.add_provider_for_devices(devices, provider_options(target))
    return so


@contextlib.contextmanager
def _capture_stderr_fd():
    """Capture file descriptor 2 (native libraries log there) into a temporary file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield f
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _unsupported_from_log(log: str) -> list[str]:
    found = re.findall(r"\{ name: ([^,]+), type: ([^ }]+) \}", log)
    reasons = re.findall(r"REASON : (.*)", log)
    items = sorted({f"{op} (node {name})" for name, op in found})
    return items or sorted(set(r.strip() for r in reasons))


def _create(path: str | os.PathLike, so):
    import onnxruntime as ort

    with _capture_stderr_fd() as f:
        try:
            return ort.InferenceSession(str(path), so)
        except Exception as e:
            f.seek(0)
            log = f.read().decode("utf-8", "replace")
            ops = _unsupported_from_log(log)
            if ops or "fallback to CPU EP has been explicitly disabled" in str(e):
                raise UnsupportedOpsError(
                    f"{path}: the QNN HTP cannot run the whole graph (CPU fallback disabled); "
                    f"unsupported: {', '.join(ops) or 'see onnxruntime log'}") from None
            raise RuntimeError(f"{path}: QNN HTP session failed: {e}") from None


def compile_epcontext(qdq_path: str | os.PathLike, ctx_path: str | os.PathLike, target: dict) -> Path:
    """Compile ``qdq_path`` for ``target``'s HTP; write the EPContext model (binary embedded)."""
    ctx_path = Path(ctx_path)
    with atomic_path(ctx_path) as tmp:
        tmp.unlink()  # the EP refuses to overwrite an existing context file
        so = _session_options(target, {"ep.context_enable": "1", "ep.context_embed_mode": "1",
                                       "ep.context_file_path": str(tmp)})
        _create(qdq_path, so)
        if not tmp.exists():
            raise RuntimeError(f"{qdq_path}: QNN compiled the model but wrote no EPContext file")
    return ctx_path


def htp_session(path: str | os.PathLike, target: dict):
    """An inference session on the QNN HTP backend (on x86 the simulator shipped in the wheel)."""
    return _create(path, _session_options(target))


def epcontext_ops(path: str | os.PathLike) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]
