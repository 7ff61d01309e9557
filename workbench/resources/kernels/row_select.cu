// Row-wise selection: in row r, prune the k[r] lowest scores (ties broken by column index, as the
// stable torch sort of the reference) -> mask[r, c] = 1 for pruned weights. k may differ per row, so
// one kernel serves uniform, OWL, DSA and BESA's row-wise counts.
//
// Launch: block (256) — the tie scan below assumes exactly 256 threads —, grid (rows); one block a row.
// Method: radix select on the 32-bit order-preserving key of each float, 8 bits per pass (4 passes),
// with a 256-bin histogram in shared memory; rows of up to ROW_CACHE entries are read from global
// memory once into shared memory and every pass runs there. Then one ordered pass marks keys below
// the k-th key, and the first `remaining` keys equal to it (by index, through a block-wide scan).
#define THREADS 256
#define ROW_CACHE 8192

__device__ __forceinline__ unsigned int order_key(float f) {
  unsigned int bits = __float_as_uint(f);
  if (f == 0.0f) bits = 0u;  // -0 and +0 compare equal, as in torch
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

extern "C" __global__ void row_select(const float* __restrict__ scores, const int* __restrict__ k,
                                      unsigned char* __restrict__ mask, int cols) {
  __shared__ float cache[ROW_CACHE];
  __shared__ unsigned int hist[256];
  __shared__ unsigned int scan[THREADS];
  __shared__ unsigned int prefix, prefix_mask, remaining;
  const int tid = threadIdx.x;
  const long long row = blockIdx.x;
  const float* s = scores + row * cols;
  unsigned char* m = mask + row * cols;
  const int kk = k[row];

  if (kk <= 0 || kk >= cols) {  // nothing or everything: uniform across the block
    for (int i = tid; i < cols; i += THREADS) m[i] = kk > 0 ? 1 : 0;
    return;
  }
  const bool cached = cols <= ROW_CACHE;
  if (cached) {
    for (int i = tid; i < cols; i += THREADS) cache[i] = s[i];
  }
  const float* src = cached ? cache : s;
  if (tid == 0) {
    prefix = 0u;
    prefix_mask = 0u;
    remaining = (unsigned int)kk;  // rank (1-based) of the k-th smallest among the keys still matching
  }
  // no barrier needed here: the first pass's barrier after zeroing `hist` also publishes cache and prefix

  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += THREADS) hist[b] = 0u;
    __syncthreads();
    for (int i = tid; i < cols; i += THREADS) {
      const unsigned int key = order_key(src[i]);
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      unsigned int r = remaining;
      unsigned int b = 0;
      while (hist[b] < r) {
        r -= hist[b];
        ++b;
      }
      prefix |= b << shift;
      prefix_mask |= 255u << shift;
      remaining = r;
    }
    __syncthreads();
  }

  // prefix is now the k-th smallest key; `remaining` keys equal to it must go, the lowest indices first.
  const unsigned int kth = prefix, need = remaining;
  unsigned int seen_equal = 0u;
  for (int base = 0; base < cols; base += THREADS) {
    const int i = base + tid;
    unsigned int equal = 0u;
    if (i < cols) {
      const unsigned int key = order_key(src[i]);
      equal = key == kth;
      m[i] = key < kth ? 1 : 0;
    }
    scan[tid] = equal;
    __syncthreads();
    for (int offset = 1; offset < THREADS; offset <<= 1) {  // inclusive Hillis-Steele scan
      const unsigned int add = tid >= offset ? scan[tid - offset] : 0u;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    if (equal) m[i] = (seen_equal + scan[tid] - 1u) < need ? 1 : 0;
    seen_equal += scan[THREADS - 1];
    __syncthreads();
  }
}
