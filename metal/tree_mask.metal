// Tree attention mask and per-node positions. One thread per mask element.
//
// This file is a kernel *body*: mx.fast.metal_kernel / mx.fast.cuda_kernel generate the signature
// around it, and mlx_spec/kernel_harness.py wraps it in a C++ grid loop for the CPU tests. A
// per-backend prologue defines `tid` (the flat thread index) before this line; backend_*.h define
// MASK_NEG_INF and mask_element<T>(float), the float -> T conversion. Template arguments: T (the
// mask's element type) and ADDITIVE (write 0 / -inf instead of 1 / 0).
//
// inputs   parents [B, n] int32: -1 a root, -2 a padding node, otherwise an earlier node (< index)
//          dims {B, n, prefix}
// outputs  mask [B, n, prefix + n] T: row i may attend to column j
//          positions [B, n] int32: prefix + depth (RoPE position of a sequential decode)
// A padding node sees only itself (never the prefix), so no softmax row is empty, and sits at
// position `prefix`; ragged trees in a batch are padded with such nodes.
const int batch = dims[0];
const int n = dims[1];
const int prefix = dims[2];
const int columns = prefix + n;
if (tid >= batch * n * columns) {
    return;  // grids are rounded up to whole thread blocks on CUDA
}
const int column = tid % columns;
const int row = (tid / columns) % n;
const int first = (tid / (columns * n)) * n;  // this batch row's first node
const bool padding = parents[first + row] == -2;

bool allowed;
if (column < prefix) {
    allowed = !padding;
} else {
    // Walk up from `row`: ancestors have smaller indices, so stop once at or below the target.
    const int target = column - prefix;
    int node = row;
    for (int step = 0; node > target && step < n; ++step) {
        node = parents[first + node];
    }
    allowed = node == target;
}
mask[tid] = mask_element<T>(ADDITIVE ? (allowed ? 0.0f : MASK_NEG_INF) : (allowed ? 1.0f : 0.0f));

if (column == 0) {
    int depth = 0;
    int node = parents[first + row];
    for (int step = 0; node >= 0 && step < n; ++step) {
        depth += 1;
        node = parents[first + node];
    }
    positions[first + row] = prefix + depth;
}
