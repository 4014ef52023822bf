// Beam packing: the deduplicated tree of W beams, its tokens in (beam, depth) order, and the index
// that unpacks per-node results back to [B, W, L]. One thread per (batch, beam, depth). A kernel
// body: see tree_mask.metal for how it is wrapped.
//
// inputs   beams [B, W, L] int32, owners [B, W, L] int32 (beam_owner.metal), dims {B, W, L, pad}
// outputs  tokens, parents, beam_of, depth_of [B, W*L] int32: node k of the packed tree; slots
//          from count[b] on are padding (token `pad`, parent -2, beam -1, depth -1)
//          unpack [B, W, L] int32: the packed slot holding (w, d)'s token
//          count [B] int32: nodes in each packed tree
// Beam v owns a suffix of its depths (owners are non-decreasing and never exceed v), so its nodes
// fill slots base(v) .. base(v) + L - start(v) - 1, base(v) being the nodes owned by beams < v.
const int batch = dims[0];
const int width = dims[1];
const int length = dims[2];
const int pad = dims[3];
const int size = width * length;
if (tid >= batch * size) {
    return;
}
const int depth = tid % length;
const int beam = (tid / length) % width;
const int first = tid - beam * length - depth;
const int owner = owners[tid];
const int parent_owner = depth > 0 ? owners[tid - 1] : -1;

// One pass over the beams finds base and start for the three beams this thread needs.
int total = 0;
int base_self = 0, start_self = 0;
int base_owner = 0, start_owner = 0;
int base_parent = 0, start_parent = 0;
for (int other = 0; other < width; ++other) {
    int start = 0;
    while (start < length && owners[first + other * length + start] != other) {
        start += 1;
    }
    if (other == beam) { base_self = total; start_self = start; }
    if (other == owner) { base_owner = total; start_owner = start; }
    if (other == parent_owner) { base_parent = total; start_parent = start; }
    total += length - start;
}

if (owner == beam) {
    const int slot = first + base_self + depth - start_self;
    tokens[slot] = beams[tid];
    parents[slot] = depth == 0 ? -1 : base_parent + depth - 1 - start_parent;
    beam_of[slot] = beam;
    depth_of[slot] = depth;
}
unpack[tid] = base_owner + depth - start_owner;

const int index_in_row = tid - first;  // also the slot this thread pads if it is past the end
if (index_in_row >= total) {
    tokens[tid] = pad;
    parents[tid] = -2;
    beam_of[tid] = -1;
    depth_of[tid] = -1;
}
if (index_in_row == 0) {
    count[first / size] = total;
}
