// Apply a prune mask in place: w[i] = 0 where mask[i] != 0. Zeroing needs no arithmetic, so one kernel
// per element width serves every dtype: 32-bit (float32) and 16-bit (float16, bfloat16).
// Launch: block (256), grid (min(ceil(n / 256), 65535)); grid-stride loop.
extern "C" __global__ void apply_mask_32(unsigned int* __restrict__ w, const unsigned char* __restrict__ mask,
                                         long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (mask[i]) w[i] = 0u;
  }
}

extern "C" __global__ void apply_mask_16(unsigned short* __restrict__ w, const unsigned char* __restrict__ mask,
                                         long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (mask[i]) w[i] = (unsigned short)0;
  }
}
