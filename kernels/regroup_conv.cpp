// PyTorch binding of the regrouped-convolution kernel (regroup_conv.cu):
// argument checks, the output tensor, the current stream, the launch.
//
// It registers a dispatcher operator, torch.ops.<extension name>.forward,
// instead of a pybind11 module, and includes ATen's core headers only:
// torch/extension.h (all of libtorch's C++ API and pybind11) took the host
// compiler 45 s on 2 cores, these headers about 12 s.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <cuda_runtime.h>

cudaError_t launch_regroup_conv(
    const float* x, float* out, const float* w_all, const int* task_row, const int* task_block,
    const int* task_w_start, const int* col_start, const int* ncols, const int* col_c, const int* col_dy,
    const int* col_dx, int tasks, long long grid_x, int n_batch, int c_in, int height, int width, int c_out,
    int out_h, int out_w, int stride_h, int stride_w, int pad_h, int pad_w, cudaStream_t stream);
int regroup_conv_threads();

namespace {

void check_table(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == x.device(), name, " must be on the input's device");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32");
}

}  // namespace

at::Tensor regroup_conv_forward(
    at::Tensor x, at::Tensor w_all, at::Tensor task_row, at::Tensor task_block,
    at::Tensor task_w_start, at::Tensor col_start, at::Tensor ncols, at::Tensor col_c,
    at::Tensor col_dy, at::Tensor col_dx, int64_t c_out, int64_t kernel_h, int64_t kernel_w,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, "x must be a 4-D CUDA tensor (NCHW)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32");
  TORCH_CHECK(w_all.is_cuda() && w_all.scalar_type() == at::kFloat && w_all.is_contiguous() &&
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
  auto out = at::zeros({n_batch, c_out, out_h, out_w}, input.options());
  const int64_t tasks = task_row.numel();
  const int64_t pixels = n_batch * out_h * out_w;
  if (tasks == 0 || pixels == 0) return out;
  TORCH_CHECK(tasks <= 65535, "at most 65535 block rows per layer (grid.y), got ", tasks);
  const int64_t threads = regroup_conv_threads();
  const int64_t grid_x = (pixels + threads - 1) / threads;
  TORCH_CHECK(grid_x <= 2147483647LL, "input too large for one launch");
  const cudaError_t status = launch_regroup_conv(
      input.data_ptr<float>(), out.data_ptr<float>(), w_all.data_ptr<float>(),
      task_row.data_ptr<int>(), task_block.data_ptr<int>(), task_w_start.data_ptr<int>(),
      col_start.data_ptr<int>(), ncols.data_ptr<int>(), col_c.data_ptr<int>(), col_dy.data_ptr<int>(),
      col_dx.data_ptr<int>(), static_cast<int>(tasks), grid_x, static_cast<int>(n_batch), static_cast<int>(c_in),
      static_cast<int>(height), static_cast<int>(width), static_cast<int>(c_out), static_cast<int>(out_h),
      static_cast<int>(out_w), static_cast<int>(stride_h), static_cast<int>(stride_w), static_cast<int>(pad_h),
      static_cast<int>(pad_w), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(status == cudaSuccess, "regrouped convolution kernel launch failed: ", cudaGetErrorString(status));
  return out;
}

// The namespace is the extension's (content-hashed) name, so two builds loaded
// into one process do not collide; the extra macro level expands it first.
#define REGISTER_REGROUP_CONV(ns)                                                                       \
  TORCH_LIBRARY(ns, m) {                                                                                \
    m.def("forward(Tensor x, Tensor w_all, Tensor task_row, Tensor task_block, Tensor task_w_start, "   \
          "Tensor col_start, Tensor ncols, Tensor col_c, Tensor col_dy, Tensor col_dx, int c_out, "     \
          "int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w) -> Tensor");   \
  }                                                                                                     \
  TORCH_LIBRARY_IMPL(ns, CUDA, m) { m.impl("forward", &regroup_conv_forward); }
REGISTER_REGROUP_CONV(TORCH_EXTENSION_NAME)
