// Header for the kernel bodies on NVIDIA GPUs (mx.fast.cuda_kernel). The prologue placed before
// each body is `const int tid = int(blockIdx.x * blockDim.x + threadIdx.x);`; mlx rounds the grid
// up to whole blocks, which is why every body begins with a bounds check.
#define MASK_NEG_INF __int_as_float(0xff800000)

// Explicit conversions: builds that define __CUDA_NO_HALF_CONVERSIONS__ drop __half(float).
template <typename T>
__device__ inline T mask_element(float value) {
    return T(value);
}
template <>
__device__ inline __half mask_element<__half>(float value) {
    return __float2half(value);
}
template <>
__device__ inline __nv_bfloat16 mask_element<__nv_bfloat16>(float value) {
    return __float2bfloat16(value);
}
