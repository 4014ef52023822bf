// Shim that lets the kernel bodies compile as plain C++ (mlx_spec/kernel_harness.py): Metal's
// address-space qualifiers vanish, T is a host type, and a grid loop supplies `thread_index`; the
// prologue placed before each body is `const int tid = thread_index;`.
#include <cstdint>
#include <limits>

#define device
#define constant
#define threadgroup
#define MASK_NEG_INF (-std::numeric_limits<float>::infinity())

template <typename T>
inline T mask_element(float value) {
    return T(value);
}
