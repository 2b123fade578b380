"""Device export of the driving policy: ONNX (fp32 CPU, fp16 GPU), QNN QDQ, HTP EPContext, report."""

from export.onnx_export import export_onnx, to_fp16
from export.qnn import UnsupportedOpsError, compile_epcontext, htp_session, qnn_status
from export.quantize import CalibrationError, quantize_qdq
from export.report import verify_manifest
from export.verify import action_errors

__all__ = ["export_onnx", "to_fp16", "quantize_qdq", "CalibrationError", "compile_epcontext",
           "htp_session", "qnn_status", "UnsupportedOpsError", "action_errors", "verify_manifest"]
