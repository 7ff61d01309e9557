// Wanda statistics: out[j] += sum over tokens t of x[t, j]^2  (x: tokens x features, row-major, float32).
// Launch: block (256), grid (ceil(features / 256), token_chunks). Thread (bx, tx) owns feature
// j = bx * 256 + tx and sums the rows of chunk blockIdx.y; neighbouring threads read neighbouring
// features of a row (coalesced). One atomicAdd per thread and chunk; no shared memory.
extern "C" __global__ void accumulate_sq_norm(const float* __restrict__ x, float* __restrict__ out,
                                              long long tokens, int features, int rows_per_chunk) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= features) return;
  const long long start = (long long)blockIdx.y * rows_per_chunk;
  long long end = start + rows_per_chunk;
  if (end > tokens) end = tokens;
  float acc = 0.0f;
  for (long long t = start; t < end; ++t) {
    const float v = x[t * features + j];
    acc += v * v;
  }
  atomicAdd(&out[j], acc);
}
