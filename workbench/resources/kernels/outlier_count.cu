// OWL's outlier statistic as a two-stage reduction over a score tensor of n entries:
//   stage 1 (block_reduce): each block reduces a grid-stride share of the entries to one partial:
//       mode 0: the sum of the scores;  mode 1: the number of scores > threshold;
//   stage 2 (final_reduce): one block reduces the partials to the result.
// The caller runs mode 0 (mean = sum / n), then mode 1 with threshold = M * mean.
// Launch: stage 1 block (256), grid (B <= 1024); stage 2 block (256), grid (1).
// Inside a block: warp shuffles reduce 32 values, warp leaders meet in shared memory.
#define BLOCK 256

__device__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__device__ double block_sum(double v) {
  __shared__ double warp_partial[BLOCK / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) warp_partial[warp] = v;
  __syncthreads();
  v = (threadIdx.x < BLOCK / 32) ? warp_partial[threadIdx.x] : 0.0;
  v = warp_sum(v);  // every thread takes part; thread 0 holds the block's total
  return v;  // called once per kernel: a second call would first need a barrier (warp_partial is reused)
}

extern "C" __global__ void block_reduce(const float* __restrict__ s, long long n, int mode, float threshold,
                                        double* __restrict__ partial) {
  double acc = 0.0;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    acc += mode == 0 ? (double)s[i] : (s[i] > threshold ? 1.0 : 0.0);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

extern "C" __global__ void final_reduce(const double* __restrict__ partial, int count, double* __restrict__ out) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[0] = acc;
}
