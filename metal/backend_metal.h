// Header for the kernel bodies on Apple GPUs (mx.fast.metal_kernel). The prologue placed before
// each body is `const int tid = int(thread_position_in_grid.x);` (mlx adds the attribute to the
// signature because the name appears in the source).
#define MASK_NEG_INF as_type<float>(0xff800000u)

template <typename T>
inline T mask_element(float value) {
    return T(value);
}
