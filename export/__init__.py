"""Device export of the driving policy: ONNX (fp32 CPU, fp16 GPU), tinygrad (845 GPU), QNN QDQ, HTP EPContext, report."""

from drivegpt.export.onnx_export import export_onnx, to_fp16
from drivegpt.export.qnn import UnsupportedOpsError, compile_epcontext, htp_session, qnn_status
from drivegpt.export.quantize import CalibrationError, quantize_qdq
from drivegpt.export.report import verify_manifest
from drivegpt.export.tinygrad_gpu import (TinygradPolicy, TinygradRunError, TinygradUnsupportedOpsError,
                                          adreno_estimate, tinygrad_status)
from drivegpt.export.verify import action_errors

__all__ = ["export_onnx", "to_fp16", "quantize_qdq", "CalibrationError", "compile_epcontext",
           "htp_session", "qnn_status", "UnsupportedOpsError", "action_errors", "verify_manifest",
           "TinygradPolicy", "TinygradUnsupportedOpsError", "TinygradRunError", "tinygrad_status", "adreno_estimate"]
