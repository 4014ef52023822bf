// Beam prefix dedup: for every (beam, depth), the first beam sharing that beam's tokens up to and
// including this depth (its "owner"). One thread per (batch, beam, depth). A kernel body: see
// tree_mask.metal for how it is wrapped.
//
// inputs   beams [B, W, L] int32, dims {B, W, L}
// outputs  owners [B, W, L] int32; owners[b, w, d] <= w, non-decreasing in d, and (w, d) is a
//          node of the packed tree exactly when owners[b, w, d] == w
const int batch = dims[0];
const int width = dims[1];
const int length = dims[2];
if (tid >= batch * width * length) {
    return;
}
const int depth = tid % length;
const int beam = (tid / length) % width;
const int first = tid - beam * length - depth;  // beam 0, depth 0 of this batch row

int owner = beam;
for (int other = 0; other < beam && owner == beam; ++other) {
    bool same = true;
    for (int d = 0; d <= depth && same; ++d) {
        same = beams[first + other * length + d] == beams[first + beam * length + d];
    }
    if (same) {
        owner = other;
    }
}
owners[tid] = owner;
