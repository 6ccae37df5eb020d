"""Build the regrouped-convolution CUDA kernel with nvcc through
torch.utils.cpp_extension, as a library that registers the operator
torch.ops.<name>.forward, cached by content: the build directory is named
after a hash of the source, the target architectures and the CUDA version,
so a second run loads the built module instead of recompiling.

Targets: STRUCTLTH_CUDA_ARCHS when set ("90", "80,90"), else the GPU
present (its compute capability); without a GPU (`--build-only`), sm_80 and
sm_90.
"""
import hashlib
import os

import torch

from utils.errors import InvalidInput

HERE = os.path.dirname(os.path.abspath(__file__))
# The kernel (nvcc, CUDA runtime only) and its PyTorch binding (the host compiler).
KERNEL_SOURCES = tuple(os.path.join(HERE, f"regroup_conv.{ext}") for ext in ("cu", "cpp"))
DEFAULT_ARCHS = ("80", "90")


def target_archs():
    if os.environ.get("STRUCTLTH_CUDA_ARCHS"):  # e.g. "90" or "80,90": what to compile for
        return tuple(a.strip() for a in os.environ["STRUCTLTH_CUDA_ARCHS"].split(",") if a.strip())
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return (f"{major}{minor}",)
    return DEFAULT_ARCHS


def cache_root():
    return os.environ.get("STRUCTLTH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "structlth"))


def wheel_include_dirs():
    """Header folders of pip's nvidia-* wheels (cuSPARSE, cuBLAS, ...): torch's
    CUDA headers include them, and an nvcc-only toolkit may lack them."""
    import glob
    import importlib.util
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = set()
    for base in spec.submodule_search_locations:
        for header in glob.glob(os.path.join(base, "*", "include", "cusparse.h")):
            found.add(os.path.dirname(header))
    return sorted(found)


class CudaKernel:
    """The built kernel: `forward` is its operator (torch.ops.<name>.forward),
    `path` the shared library it was loaded from."""

    def __init__(self, name, path):
        self.name, self.path = name, path
        self.forward = getattr(torch.ops, name).forward


def build_regroup_kernel(verbose=False):
    """Compile (or find in the cache) and load the kernel; a CudaKernel."""
    if torch.version.cuda is None:
        raise InvalidInput("this PyTorch build has no CUDA support: install a CUDA build to compile the kernel")
    toolkit = os.environ.get("CUDA_HOME")
    if not toolkit and os.path.isdir("/usr/local/cuda"):
        # The toolkit's own folder (include/, lib64/libcudart.so), not nvcc's /usr/local/bin parent,
        # which cpp_extension guesses when no GPU driver is present; it reads CUDA_HOME at import.
        toolkit = os.environ["CUDA_HOME"] = "/usr/local/cuda"
    from torch.utils import cpp_extension

    if toolkit:
        cpp_extension.CUDA_HOME = toolkit
    archs = target_archs()
    source = b""
    for source_path in KERNEL_SOURCES:
        with open(source_path, "rb") as f:
            source += f.read()
    digest = hashlib.sha256(source + ",".join(archs).encode() + torch.version.cuda.encode()).hexdigest()[:12]
    name = f"regroup_conv_{digest}"
    build_dir = os.path.join(cache_root(), "kernels", name)
    os.makedirs(build_dir, exist_ok=True)
    flags = ["-O3"] + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    try:
        # is_python_module=False: the library registers an operator (no pybind11) and is loaded
        # with torch.ops.load_library; load() returns its path.
        path = cpp_extension.load(name=name, sources=list(KERNEL_SOURCES), extra_cuda_cflags=flags,
                                  extra_include_paths=wheel_include_dirs(), build_directory=build_dir,
                                  is_python_module=False, verbose=verbose)
    except (RuntimeError, OSError, ImportError) as err:
        raise InvalidInput(f"building the regrouped-convolution kernel failed (nvcc, CUDA {torch.version.cuda}, "
                        f"sm_{'/sm_'.join(archs)}): {str(err).strip().splitlines()[-1]}") from None
    return CudaKernel(name, path)
