"""Weight quantization formats the expert kernels read (one module per format): ``mxfp4``; ``convert``
turns a model's experts into one of them."""
from .convert import convert_experts_to_mxfp4, is_mxfp4_experts
from .mxfp4 import dequantize_mxfp4, quantize_mxfp4

__all__ = ["convert_experts_to_mxfp4", "dequantize_mxfp4", "is_mxfp4_experts", "quantize_mxfp4"]
