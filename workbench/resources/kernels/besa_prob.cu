// BESA's differentiable mask, row-wise: keep-probability of the weight at importance rank j of its row
// (rank 0 = least important) is P_j = 1 - sum_k p_k * [j < C * c_k], with c_k the candidate sparsities
// (sorted descending, e.g. 1.00, 0.99, ..., 0.00) and p_k their probabilities for this row (layer-wise
// BESA passes one row of probabilities with prob_row_stride = 0).
// Launch: block (256) — exactly 256 threads, K <= 256 —, grid (rows); one block a row.
// The block builds the cumulative sums of p in shared memory (a scan), then every weight finds by binary
// search how many candidates satisfy j < C * c_k (a prefix, because c_k is descending).
#define BESA_THREADS 256

extern "C" __global__ void besa_keep_prob(const int* __restrict__ ranks, const float* __restrict__ probs,
                                          long long prob_row_stride, const float* __restrict__ cands,
                                          int k_count, float* __restrict__ out, int cols) {
  __shared__ float cum[BESA_THREADS];
  __shared__ float bound[BESA_THREADS];
  const int t = threadIdx.x;
  const long long row = blockIdx.x;
  const float* p = probs + row * prob_row_stride;
  cum[t] = t < k_count ? p[t] : 0.0f;
  bound[t] = t < k_count ? (float)cols * cands[t] : -1.0f;
  __syncthreads();
  for (int offset = 1; offset < BESA_THREADS; offset <<= 1) {  // inclusive scan of p
    const float add = t >= offset ? cum[t - offset] : 0.0f;
    __syncthreads();
    cum[t] += add;
    __syncthreads();
  }
  for (int c = t; c < cols; c += BESA_THREADS) {
    const float j = (float)ranks[row * cols + c];
    int lo = 0, hi = k_count;  // first candidate with C * c_k <= j
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (bound[mid] > j) lo = mid + 1; else hi = mid;
    }
    out[row * cols + c] = 1.0f - (lo > 0 ? cum[lo - 1] : 0.0f);
  }
}
