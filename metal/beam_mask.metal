// Attention mask of a packed beam tree in closed form: packed node p sees node q when
//   depth_q <= depth_p and owners[beam_p, depth_q] == beam_q
// (q is the node beam_p passes through at depth_q). One thread per mask element, no walk.
// A kernel body: see tree_mask.metal for how it is wrapped.
//
// inputs   owners [B, W, L] int32, beam_of [B, N] int32, depth_of [B, N] int32 (beam_pack.metal,
//          possibly cut to the first N slots), dims {B, W, L, N, prefix}
// outputs  mask [B, N, prefix + N] T, positions [B, N] int32 (prefix + depth)
// Padding slots (beam -1) see only themselves and sit at position `prefix`, as in tree_mask.metal.
const int batch = dims[0];
const int width = dims[1];
const int length = dims[2];
const int n = dims[3];
const int prefix = dims[4];
const int columns = prefix + n;
if (tid >= batch * n * columns) {
    return;
}
const int column = tid % columns;
const int row = (tid / columns) % n;
const int b = tid / (columns * n);
const int beam_p = beam_of[b * n + row];
const int depth_p = depth_of[b * n + row];

bool allowed;
if (beam_p < 0) {
    allowed = column - prefix == row;
} else if (column < prefix) {
    allowed = true;
} else {
    const int q = b * n + column - prefix;
    const int beam_q = beam_of[q];
    const int depth_q = depth_of[q];
    allowed = beam_q >= 0 && depth_q <= depth_p
              && owners[(b * width + beam_p) * length + depth_q] == beam_q;
}
mask[tid] = mask_element<T>(ADDITIVE ? (allowed ? 0.0f : MASK_NEG_INF) : (allowed ? 1.0f : 0.0f));

if (column == 0) {
    positions[b * n + row] = prefix + (depth_p > 0 ? depth_p : 0);
}
