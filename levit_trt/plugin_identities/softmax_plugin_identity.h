// The softmax plugin's identity, stated once. The TensorRT plugin compiles these in, and
// levit_trt/plugins.py reads the three #define lines below (keep them as simple string literals)
// so that the ONNX rewrite names the same plugin that the library registers. It lives in the
// Python package (package data) so that an installed levit_trt, not only a checkout, can read it.
#pragma once

#define LEVIT_SOFTMAX_PLUGIN_NAME "LevitSoftmax"
#define LEVIT_SOFTMAX_PLUGIN_VERSION "1"
#define LEVIT_SOFTMAX_PLUGIN_NAMESPACE "levit_trt"
