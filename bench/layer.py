"""Shared pieces of the per-layer profiling scripts in profile/: kernel
files (one masked conv weight each, written by profile/regroup_conv/split.py),
the input-shape flags of the original scripts, and the line that states the
hardware and versions under every table (timing: utils/timing.py)."""
import platform

import torch

from utils.checkpoint import load_file
from app.flags import add_trust_flag
from utils.errors import InvalidInput


def add_shape_args(parser):
    g = parser.add_argument_group("layer input (defaults: what split.py recorded, else CIFAR-10 shapes)")
    g.add_argument("--kernel_file", required=True, help="a layer file written by profile/regroup_conv/split.py")
    g.add_argument("--batch_size", type=int, nargs="+", default=[64], help="one or several batch sizes")
    g.add_argument("--input_height", type=int, default=None)
    g.add_argument("--input_width", type=int, default=None)
    g.add_argument("--vertical_stride", type=int, default=None)
    g.add_argument("--horizontal_stride", type=int, default=None)
    g.add_argument("--vertical_padding", type=int, default=None)
    g.add_argument("--horizontal_padding", type=int, default=None)
    g.add_argument("--repeats", type=int, default=50, help="timed runs (the median is reported)")
    g.add_argument("--gpu", type=int, default=None)
    add_trust_flag(g)


def load_layer(args):
    """(weight [c_out, c_in, kh, kw], geometry dict) from --kernel_file and the shape flags
    (geometry["batches"]: the batch sizes to run)."""
    obj = load_file(args.kernel_file, "--kernel_file", args.trust_checkpoint)
    weight = obj.get("weight") if isinstance(obj, dict) else obj
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise InvalidInput(f"--kernel_file '{args.kernel_file}' does not hold a 4-D conv weight (got {shape})")
    rec = obj if isinstance(obj, dict) else {}
    kh, kw = weight.shape[2:]
    geometry = {
        "batches": list(args.batch_size),
        "height": args.input_height or rec.get("input_hw", (32, 32))[0],
        "width": args.input_width or rec.get("input_hw", (32, 32))[1],
        "stride": (args.vertical_stride or rec.get("stride", (1, 1))[0], args.horizontal_stride or rec.get("stride", (1, 1))[1]),
        "padding": (rec.get("padding", (kh // 2, kw // 2))[0] if args.vertical_padding is None else args.vertical_padding,
                    rec.get("padding", (kh // 2, kw // 2))[1] if args.horizontal_padding is None else args.horizontal_padding),
    }
    for key, value in [("batch size", min(geometry["batches"])), ("height", geometry["height"]),
                       ("width", geometry["width"])]:
        if value < 1:
            raise InvalidInput(f"{key} must be at least 1, got {value}")
    if min(geometry["stride"]) < 1 or min(geometry["padding"]) < 0:
        raise InvalidInput(f"strides must be >= 1 and paddings >= 0, got {geometry['stride']} / {geometry['padding']}")
    out_h = (geometry["height"] + 2 * geometry["padding"][0] - kh) // geometry["stride"][0] + 1
    out_w = (geometry["width"] + 2 * geometry["padding"][1] - kw) // geometry["stride"][1] + 1
    if out_h < 1 or out_w < 1:
        raise InvalidInput(f"a {kh}x{kw} kernel does not fit a {geometry['height']}x{geometry['width']} input "
                        f"with padding {geometry['padding']}")
    return weight.float(), geometry


def cpu_description():
    """The CPU model (from /proc/cpuinfo where there is one) and the vector
    instructions PyTorch's CPU kernels use on it (AVX2, AVX512, ...)."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def environment_line(device):
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU: {cpu_description()}, {torch.get_num_threads()} threads")
    cudnn = f" | cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else ""
    return f"device {device} ({name}) | torch {torch.__version__}{cudnn}"
