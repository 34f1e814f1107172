"""Export: ONNX graphs (torch.onnx) and their inference with ONNX Runtime."""
from .onnx import OnnxModel, OnnxPredictor, export_onnx, load_onnx_predictor

__all__ = ["OnnxModel", "OnnxPredictor", "export_onnx", "load_onnx_predictor"]
