// Header for the kernel bodies on NVIDIA GPUs (mx.fast.cuda_kernel). The prologue placed before
// each body is `const int tid = int(blockIdx.x * blockDim.x + threadIdx.x);`; mlx rounds the grid
// up to whole blocks, which is why every body begins with a bounds check.
#define MASK_NEG_INF __int_as_float(0xff800000)
