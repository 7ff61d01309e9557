// N:M mask: in every group of M consecutive columns of a row, prune the N lowest scores (ties broken by
// column index, as the stable torch sort of the reference). M is at most 32 (the width limit).
// Launch: block (256), grid (ceil(rows * cols / M / 256)); one thread per group; the rank of element i
// in its group is #{j : s_j < s_i or (s_j == s_i and j < i)}, pruned if rank < N.
#define NM_MAX_M 32

extern "C" __global__ void nm_mask(const float* __restrict__ s, unsigned char* __restrict__ mask,
                                   long long groups, int n, int m) {
  const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  const float* v = s + g * m;
  float local[NM_MAX_M];
  for (int i = 0; i < m; ++i) local[i] = v[i];
  for (int i = 0; i < m; ++i) {
    int rank = 0;
    for (int j = 0; j < m; ++j) rank += (local[j] < local[i]) || (local[j] == local[i] && j < i);
    mask[g * m + i] = rank < n ? 1 : 0;
  }
}
