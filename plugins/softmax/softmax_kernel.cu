// The one translation unit that compiles the softmax kernels; both plugin libraries link it.
#include "softmax_kernel.cuh"
