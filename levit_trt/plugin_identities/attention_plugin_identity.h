// The fused attention plugin's identity, stated once. The TensorRT plugin compiles these in, and
// levit_trt/plugins.py reads the three #define lines below (keep them as simple string literals)
// so that the ONNX rewrite names the same plugin that the library registers.
#pragma once

#define LEVIT_ATTENTION_PLUGIN_NAME "LevitAttention"
#define LEVIT_ATTENTION_PLUGIN_VERSION "1"
#define LEVIT_ATTENTION_PLUGIN_NAMESPACE "levit_trt"
