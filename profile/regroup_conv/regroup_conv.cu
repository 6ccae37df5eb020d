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
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

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

void check_table(const torch::Tensor& t, const char* name, const torch::Tensor& x) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == x.device(), name, " must be on the input's device");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == torch::kInt32, name, " must be int32");
}

}  // namespace

torch::Tensor regroup_conv_forward(
    torch::Tensor x, torch::Tensor w_all, torch::Tensor task_row, torch::Tensor task_block,
    torch::Tensor task_w_start, torch::Tensor col_start, torch::Tensor ncols, torch::Tensor col_c,
    torch::Tensor col_dy, torch::Tensor col_dx, int64_t c_out, int64_t kernel_h, int64_t kernel_w,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, "x must be a 4-D CUDA tensor (NCHW)");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  TORCH_CHECK(w_all.is_cuda() && w_all.scalar_type() == torch::kFloat32 && w_all.is_contiguous() &&
              w_all.device() == x.device(), "w_all must be a contiguous float32 tensor on x's device");
  check_table(task_row, "task_row", x);
  check_table(task_block, "task_block", x);
  check_table(task_w_start, "task_w_start", x);
  check_table(col_start, "col_start", x);
  check_table(ncols, "ncols", x);
  check_table(col_c, "col_c", x);
  check_table(col_dy, "col_dy", x);
  check_table(col_dx, "col_dx", x);
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1 && pad_h >= 0 && pad_w >= 0, "bad stride or padding");
  const c10::cuda::CUDAGuard guard(x.device());
  auto input = x.contiguous();
  const int64_t n_batch = input.size(0), c_in = input.size(1), height = input.size(2), width = input.size(3);
  // kernel_h / kernel_w are the dilated extents: dilation * (k - 1) + 1.
  const int64_t out_h = (height + 2 * pad_h - kernel_h) / stride_h + 1;
  const int64_t out_w = (width + 2 * pad_w - kernel_w) / stride_w + 1;
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "the kernel does not fit the input");
  auto out = torch::zeros({n_batch, c_out, out_h, out_w}, input.options());
  const int64_t tasks = task_row.numel();
  const int64_t pixels = n_batch * out_h * out_w;
  if (tasks == 0 || pixels == 0) return out;
  TORCH_CHECK(tasks <= 65535, "at most 65535 block rows per layer (grid.y), got ", tasks);
  const int64_t grid_x = (pixels + kThreads - 1) / kThreads;
  TORCH_CHECK(grid_x <= 2147483647LL, "input too large for one launch");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(tasks));
  regroup_conv_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      input.data_ptr<float>(), out.data_ptr<float>(), w_all.data_ptr<float>(),
      task_row.data_ptr<int>(), task_block.data_ptr<int>(), task_w_start.data_ptr<int>(),
      col_start.data_ptr<int>(), ncols.data_ptr<int>(), col_c.data_ptr<int>(), col_dy.data_ptr<int>(),
      col_dx.data_ptr<int>(), static_cast<int>(n_batch), static_cast<int>(c_in), static_cast<int>(height),
      static_cast<int>(width), static_cast<int>(c_out), static_cast<int>(out_h), static_cast<int>(out_w),
      static_cast<int>(stride_h), static_cast<int>(stride_w), static_cast<int>(pad_h), static_cast<int>(pad_w));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &regroup_conv_forward, "regrouped convolution forward (CUDA, fp32, NCHW)");
}
