"""Weight quantization formats the expert kernels read (one module per format): ``mxfp4``."""
from .mxfp4 import dequantize_mxfp4, quantize_mxfp4

__all__ = ["dequantize_mxfp4", "quantize_mxfp4"]
