// Wanda scores: s[r, c] = |w[r, c]| * norm[c]  (w: rows x cols row-major, float32).
// Launch: block (256), grid (min(ceil(n / 256), 65535)); grid-stride loop over the n = rows * cols entries.
extern "C" __global__ void wanda_scores(const float* __restrict__ w, const float* __restrict__ norm,
                                        float* __restrict__ s, long long n, int cols) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    s[i] = fabsf(w[i]) * norm[i % cols];
  }
}
