// The one translation unit that compiles the attention kernels; both plugin libraries link it.
#include "attention_kernel.cuh"
