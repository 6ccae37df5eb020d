// Regrouped convolution: compute only the dense blocks of a regrouped layer.
//
// Host-side tables (built and tested on the CPU by models/regrouped.py,
// kernel_tables()) describe every block row as one "task":
//   task_row[t]      output channel of task t
//   task_block[t]    its block
//   task_w_start[t]  offset of its weights (one per block column) in w_all
//   col_start[b], ncols[b]       block b's columns in col_c / col_dy / col_dx
//   col_c, col_dy, col_dx        input channel and tap offsets (dilation applied)
// One thread computes one output element (n, task_row[t], oh, ow); rows of
// different tasks are distinct, so no atomics; outputs of rows without a
// block stay zero. Layout NCHW, fp32, any batch size.
//
// This file holds the kernel and its launcher and includes only the CUDA
// runtime; the PyTorch binding (argument checks, tensors, stream) is
// regroup_conv.cpp. nvcc then compiles a few hundred lines (2 s) instead of
// PyTorch's headers, and the host compiler compiles those once.
#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 256;

__global__ void regroup_conv_kernel(
    const float* __restrict__ x, float* __restrict__ out, const float* __restrict__ w_all,
    const int* __restrict__ task_row, const int* __restrict__ task_block, const int* __restrict__ task_w_start,
    const int* __restrict__ col_start, const int* __restrict__ ncols,
    const int* __restrict__ col_c, const int* __restrict__ col_dy, const int* __restrict__ col_dx,
    int n_batch, int c_in, int height, int width, int c_out, int out_h, int out_w,
    int stride_h, int stride_w, int pad_h, int pad_w) {
  const int task = blockIdx.y;
  const long long pixels = static_cast<long long>(n_batch) * out_h * out_w;
  const long long p = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pixels) return;
  const int n = static_cast<int>(p / (out_h * out_w));
  const int rem = static_cast<int>(p % (out_h * out_w));
  const int oh = rem / out_w;
  const int ow = rem % out_w;
  const int block = task_block[task];
  const int first = col_start[block];
  const int count = ncols[block];
  const float* w = w_all + task_w_start[task];
  float acc = 0.f;
  for (int j = 0; j < count; ++j) {
    const int iy = oh * stride_h - pad_h + col_dy[first + j];
    const int ix = ow * stride_w - pad_w + col_dx[first + j];
    if (iy >= 0 && iy < height && ix >= 0 && ix < width) {
      const long long index = ((static_cast<long long>(n) * c_in + col_c[first + j]) * height + iy) * width + ix;
      acc += w[j] * x[index];
    }
  }
  out[((static_cast<long long>(n) * c_out + task_row[task]) * out_h + oh) * out_w + ow] = acc;
}

}  // namespace

cudaError_t launch_regroup_conv(
    const float* x, float* out, const float* w_all, const int* task_row, const int* task_block,
    const int* task_w_start, const int* col_start, const int* ncols, const int* col_c, const int* col_dy,
    const int* col_dx, int tasks, long long grid_x, int n_batch, int c_in, int height, int width, int c_out,
    int out_h, int out_w, int stride_h, int stride_w, int pad_h, int pad_w, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(tasks));
  regroup_conv_kernel<<<grid, kThreads, 0, stream>>>(
      x, out, w_all, task_row, task_block, task_w_start, col_start, ncols, col_c, col_dy, col_dx,
      n_batch, c_in, height, width, c_out, out_h, out_w, stride_h, stride_w, pad_h, pad_w);
  return cudaGetLastError();
}

int regroup_conv_threads() { return kThreads; }
