"""levit_trt: LeViT from PyTorch to fast, accurate inference engines, with the numbers to prove it.

Importing the package loads no GPU library, TensorRT or ONNX Runtime; each backend imports its
own heavy dependency when it is used.
"""

__version__ = "0.1.0"
