"""A convolution whose weight is a union of dense row x column blocks (a
regrouped ticket), computed block by block.

Blocks come from `pruner.regroup.find_blocks` on the 2-D view of the mask:
rows are output channels; a column is one (input channel, tap) position for
unit "weight", or one whole input channel for unit "channel". Rows outside
every block are all zero.

Kernels (`kernel=`): "triton" (kernels/triton_conv.py, the default on
CUDA tensors; CPU tensors too under TRITON_INTERPRET=1), "cuda" (the simple
CUDA C reference, kernels/regroup_conv.cu, fp32), "cpu" (the
CPU paths below, the default on CPU tensors). Gradients of the Triton path
go through the masked dense convolution (torch.nn.grad), so a regrouped
model can be fine-tuned on a GPU.

CPU paths (also the reference for GPU kernels):
- channel: one grouped convolution, a group per block (blocks that share
  their input channels merged, every group padded with zero weights to the
  largest), over the blocks' input channels gathered once; its output
  channels are then gathered into the layer's order (rows outside every
  block read a zero channel). oneDNN runs the grouped convolution in
  channels-last far faster than one small convolution per block;
- weight: the input is unfolded once (im2col), each block multiplies its
  gathered columns by its dense weight, and the rows are added in place.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from kernels import triton_conv
from utils.timing import alternating_medians
from utils.layout import is_channels_last, memory_format_of


KERNELS = ("auto", "triton", "cuda", "cpu")


class RegroupedConv2d(nn.Module):
    def __init__(self, weight, blocks, unit="weight", stride=1, padding=0, dilation=1, bias=None, kernel="auto"):
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"weight must be 4-D [c_out, c_in, kh, kw], got shape {tuple(weight.shape)}")
        if unit not in ("weight", "channel"):
            raise ValueError(f"unit must be 'weight' or 'channel', got '{unit}'")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel '{kernel}'; valid: {', '.join(KERNELS)}")
        self.unit, self.kernel = unit, kernel
        self.triton_config = None  # None: tuned per shape on a GPU; a dict of BLOCK_M, num_warps, num_stages (and variant) fixes it
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        flat = weight.detach().cpu().reshape(self.out_channels, self.in_channels, kh * kw)  # tables are built on the CPU
        self.block_rows, self.block_cols, self.block_weights = [], [], nn.ParameterList()
        for i, (rows, cols) in enumerate(blocks):
            rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
            self.register_buffer(f"rows{i}", rows)
            self.register_buffer(f"cols{i}", cols)
            if unit == "channel":  # [rows, cols, kh, kw]
                w = flat[rows][:, cols].reshape(len(rows), len(cols), kh, kw)
            else:  # [rows, cols] over the unfolded (c_in * kh * kw) axis
                w = flat.reshape(self.out_channels, -1)[rows][:, cols]
            self.block_weights.append(nn.Parameter(w.clone()))
        self.num_blocks = len(blocks)
        covered = torch.zeros(self.out_channels, flat.shape[1] if unit == "channel" else flat[0].numel(), dtype=torch.bool)
        for rows, cols, _ in self.blocks():
            covered[rows.unsqueeze(1), cols.unsqueeze(0)] = True
        nonzero = (flat != 0).any(2) if unit == "channel" else (flat.reshape(self.out_channels, -1) != 0)
        if bool((nonzero & ~covered).any()):
            # A layer regroup left without blocks keeps its unstructured mask: use a masked nn.Conv2d for it.
            raise ValueError(f"the weight has {int((nonzero & ~covered).sum())} nonzero {unit} columns outside "
                             f"the {self.num_blocks} block(s); regrouped convolutions compute blocks only")
        self.to(weight.device)

    def blocks(self):
        return [(getattr(self, f"rows{i}"), getattr(self, f"cols{i}"), self.block_weights[i])
                for i in range(self.num_blocks)]

    def kernel_tables(self, device="cpu"):
        """The CUDA kernel's tables (see kernels/regroup_conv.cu):
        every block row is a task; columns are (input channel, dy, dx) with
        dilation applied; a task's weights are contiguous in w_all."""
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        task_row, task_block, task_w_start, weights = [], [], [], []
        col_start, ncols, col_c, col_dy, col_dx = [], [], [], [], []
        w_offset = c_offset = 0
        for b, (rows, cols, weight) in enumerate(self.blocks()):
            if self.unit == "channel":  # a channel is kh*kw columns, channel-major
                channel = cols.repeat_interleave(kh * kw)
                tap = torch.arange(kh * kw).repeat(len(cols))
            else:  # unfolded column index c * kh * kw + i * kw + j
                channel, tap = cols // (kh * kw), cols % (kh * kw)
            flat = weight.detach().reshape(len(rows), -1).float()
            col_start.append(c_offset)
            ncols.append(len(channel))
            col_c.append(channel)
            col_dy.append((tap // kw) * dh)
            col_dx.append((tap % kw) * dw)
            task_row.append(rows)
            task_block.append(torch.full((len(rows),), b))
            task_w_start.append(w_offset + torch.arange(len(rows)) * len(channel))
            weights.append(flat.reshape(-1))
            w_offset += flat.numel()
            c_offset += len(channel)

        def ints(parts):
            return (torch.cat(parts) if parts else torch.zeros(0)).to(device=device, dtype=torch.int32).contiguous()

        return {"w_all": (torch.cat(weights) if weights else torch.zeros(0)).to(device).contiguous(),
                "task_row": ints(task_row), "task_block": ints(task_block), "task_w_start": ints(task_w_start),
                "col_start": ints([torch.tensor(col_start)]), "ncols": ints([torch.tensor(ncols)]),
                "col_c": ints(col_c), "col_dy": ints(col_dy), "col_dx": ints(col_dx)}

    def extents(self):
        """Dilated kernel extents (what the kernel's output-size formula uses)."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    def output_size(self, h, w):
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def kernel_for(self, x):
        """The kernel that runs on x: `self.kernel`, or for "auto" Triton on
        CUDA tensors and the CPU path on CPU tensors."""
        kernel = self.kernel if self.kernel != "auto" else ("triton" if x.is_cuda else "cpu")
        if kernel == "triton":
            reason = triton_conv.unavailable_reason(x.device)
            if reason:
                raise RuntimeError(reason)
        elif (kernel == "cuda") != x.is_cuda:
            raise RuntimeError(f"the '{kernel}' kernel cannot run on a {x.device.type} tensor")
        return kernel

    @torch.compiler.disable(reason="per-kernel dispatch and cached tables; torch.compile takes "
                            "kernels.grouped.grouped_model's GroupedBlockConv form instead")
    def forward(self, x):
        kernel = self.kernel_for(x)
        if kernel == "triton":
            return self._forward_triton(x)
        if kernel == "cuda":
            return self._forward_cuda(x)
        n, _, h, w = x.shape
        oh, ow = self.output_size(h, w)
        if self.unit == "channel":
            gather, weight, source = self._grouped_plan(x)
            stride = self.stride
            if self.kernel_size == (1, 1) and self.padding == (0, 0) and stride != (1, 1):
                x, stride = x[:, :, ::stride[0], ::stride[1]], (1, 1)  # a strided 1x1 reads only these pixels
            x = x.contiguous(memory_format=torch.channels_last)  # where the gather and grouped conv are fast
            y = F.conv2d(select_channels(x, gather, self._gather_buffer(x, len(gather))), weight, None, stride,
                         self.padding, self.dilation, groups=weight.shape[0] // self._group_rows)
            out = select_channels(y, source)
        else:
            out = x.new_zeros(n, self.out_channels, oh, ow)
            columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [n, c_in*kh*kw, L]
            for rows, cols, weight in self.blocks():
                y = torch.matmul(weight, columns.index_select(1, cols))  # [n, rows, L]
                out.index_add_(1, rows, y.view(n, len(rows), oh, ow))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def dense_weight(self):
        """The regrouped weight [c_out, c_in, kh, kw], zeros outside the blocks
        (differentiable: its gradient gathers into the block weights)."""
        return self.scatter_blocks(list(self.block_weights))

    def scatter_blocks(self, per_block):
        """Tensors shaped like the block weights (the weights, their gradients),
        placed into one [c_out, c_in, kh, kw] tensor, zeros elsewhere."""
        kh, kw = self.kernel_size
        dense = per_block[0].new_zeros(self.out_channels, self.in_channels, kh, kw) if per_block else None
        for (rows, cols, _), values in zip(self.blocks(), per_block):
            if self.unit == "channel":
                dense = dense.index_put((rows[:, None], cols[None, :]), values)
            else:
                dense = dense.view(self.out_channels, -1).index_put((rows[:, None], cols[None, :]), values).view_as(dense)
        return dense

    def triton_state(self, device, dtype):
        """(structure, device tables, packed weights, fp32 bias or None) for the
        Triton kernel; tables are built once per device and chunk size, weights
        repacked only when they or the dtype change."""
        if getattr(self, "_triton_structure", None) is None:
            self._triton_structure = triton_conv.build_structure(
                [(r.cpu(), c.cpu()) for r, c, _ in self.blocks()], self.unit, self.out_channels, self.in_channels,
                self.kernel_size, self.dilation)
        block_k = triton_conv.chunk_size(dtype)
        if getattr(self, "_triton_tables_key", None) != (device, block_k):
            self._triton_tables = triton_conv.device_tables(self._triton_structure, device, block_k,
                                                                 self.out_channels)
            self._triton_tables_key = (device, block_k)
        key = (device, dtype, self._version, None if self.bias is None else self.bias._version)
        if getattr(self, "_triton_weights_key", None) != key:
            self._triton_weights = triton_conv.pack_weights(
                self._triton_structure, [w for _, _, w in self.blocks()], dtype, device, block_k)
            self._triton_bias = None if self.bias is None else self.bias.detach().to(device, torch.float32).contiguous()
            self._triton_weights_key = key
        return self._triton_structure, self._triton_tables, self._triton_weights, self._triton_bias

    def triton_config_used(self):
        """The Triton variant and tiles this layer ran last (None before its first Triton run)."""
        return getattr(self, "_triton_tables", {}).get("config")

    def _forward_triton(self, x, out=None, config=None):
        structure, tables, weights, bias = self.triton_state(x.device, x.dtype)

        def run(inp):
            return triton_conv.conv_forward(inp, weights, tables, structure, bias, self.out_channels,
                                                 self.stride, self.padding, out, config or self.triton_config)
        params = list(self.block_weights) + ([self.bias] if self.bias is not None else [])
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _TritonConvFunction.apply(x, self.dense_weight(), self.bias, run,
                                             (self.stride, self.padding, self.dilation))
        return run(x)

    def _forward_cuda(self, x):
        key = (x.device, self._version)
        if getattr(self, "_tables_key", None) != key:  # tables follow the weights' device and values
            self._tables, self._tables_key = self.kernel_tables(x.device), key
        t = self._tables
        out = _cuda_kernel().forward(
            x.float().contiguous(), t["w_all"], t["task_row"], t["task_block"], t["task_w_start"], t["col_start"],
            t["ncols"], t["col_c"], t["col_dy"], t["col_dx"], self.out_channels, *self.extents(), *self.stride,
            *self.padding)
        if self.bias is not None:
            out = out + self.bias.float().view(1, -1, 1, 1)
        return out.to(x.dtype)

    def _gather_buffer(self, x, channels):
        return gather_buffer(self, x, channels, self.block_weights)

    def _grouped_plan(self, x):
        """(input channels to gather, grouped weight [groups * rows, cols, kh, kw]
        in channels-last, output channel -> grouped output channel), rebuilt
        when the block weights change."""
        key = (x.device, x.dtype, self._version)
        if getattr(self, "_plan_key", None) == key:
            return self._plan
        gather, weight, source, self._group_rows = grouped_plan(
            [(rows, cols, w.detach()) for rows, cols, w in self.blocks()], self.out_channels, self.kernel_size)
        self._plan = (gather.to(x.device), weight.to(x.device, x.dtype).contiguous(memory_format=torch.channels_last),
                      source.to(x.device))
        self._plan_key = key
        return self._plan

    @property
    def _version(self):
        return tuple((w._version, w.data_ptr()) for w in self.block_weights)  # in-place updates and replaced tensors

    @classmethod
    def from_conv(cls, conv, blocks, unit="weight", kernel="auto"):
        """From an nn.Conv2d (groups=1) and the blocks of its regrouped mask."""
        if conv.groups != 1:
            raise ValueError("regrouped convolutions need groups=1")
        weight = conv.weight_orig * conv.weight_mask if hasattr(conv, "weight_mask") else conv.weight
        return cls(weight, blocks, unit, conv.stride, conv.padding, conv.dilation, conv.bias, kernel)


def grouped_plan(blocks, out_channels, kernel_size):
    """A channel-unit regrouped convolution as one grouped convolution.

    blocks: [(rows, cols, weight [rows, cols, kh, kw])]. Blocks that share
    their input channels are merged (regroup splits a part's rows by nn for
    the GPU); every group is padded with zero weights to the largest.
    Returns (input channels to gather, grouped weight [groups * rows, cols,
    kh, kw] fp32, output channel -> grouped output channel, rows per group);
    output channels outside every block read an all-zero row."""
    merged = {}
    for rows, cols, weight in blocks:
        entry = merged.setdefault(tuple(cols.tolist()), ([], []))
        entry[0].append(rows.cpu())
        entry[1].append(weight.cpu())
    groups = [(torch.cat(rows), torch.tensor(cols), torch.cat(ws)) for cols, (rows, ws) in merged.items()]
    row_count = max(len(r) for r, _, _ in groups)
    col_count = max(len(c) for _, c, _ in groups)
    covered = sum(len(r) for r, _, _ in groups)
    if covered < out_channels and all(len(r) == row_count for r, _, _ in groups):
        row_count += 1  # a zero row for the output channels outside every block to read
    kh, kw = kernel_size
    weight = torch.zeros(len(groups) * row_count, col_count, kh, kw)
    gather, source = [], torch.full((out_channels,), -1, dtype=torch.long)
    for g, (rows, cols, w) in enumerate(groups):
        weight[g * row_count: g * row_count + len(rows), :len(cols)] = w.float()
        gather.append(torch.cat([cols, cols[:1].repeat(col_count - len(cols))]))  # pads meet zero weights
        source[rows] = g * row_count + torch.arange(len(rows))
    if covered < out_channels:  # the last row of the first group with room is all zero
        g = next(g for g, (rows, _, _) in enumerate(groups) if len(rows) < row_count)
        source[source < 0] = g * row_count + row_count - 1
    return torch.cat(gather), weight, source, row_count


class GroupedBlockConv(nn.Module):
    """A channel-unit regrouped convolution as three standard operators:
    gather the blocks' input channels, one grouped convolution, gather its
    outputs into the layer's channel order (+ bias). No caches and no
    in-place buffers, so torch.export, ONNX and torch.compile take it as it
    is; RegroupedConv2d runs the same plan with a reused gather buffer."""

    def __init__(self, blocks, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=None):
        super().__init__()
        gather, weight, source, rows_per_group = grouped_plan(blocks, out_channels, kernel_size)
        self.register_buffer("gather", gather)
        self.register_buffer("source", source)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        self.groups = weight.shape[0] // rows_per_group
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.out_channels = out_channels

    @classmethod
    def from_regrouped(cls, conv):
        """From a channel-unit RegroupedConv2d (same weights, same outputs)."""
        if conv.unit != "channel":
            raise ValueError("only channel-unit regrouped convolutions are grouped convolutions")
        return cls([(rows, cols, w.detach()) for rows, cols, w in conv.blocks()], conv.out_channels,
                   conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.bias)

    def forward(self, x):
        y = F.conv2d(x.index_select(1, self.gather), self.weight.to(x.dtype), None, self.stride, self.padding,
                     self.dilation, self.groups)
        out = y.index_select(1, self.source)
        return out if self.bias is None else out + self.bias.to(x.dtype).view(1, -1, 1, 1)


class _TritonConvFunction(torch.autograd.Function):
    """Forward by the Triton kernel; backward through the regrouped weight's
    dense convolution (zeros outside the blocks get no gradient: the scatter
    in dense_weight gathers only block entries back)."""

    @staticmethod
    def forward(ctx, x, dense_weight, bias, run, geometry):
        ctx.save_for_backward(x, dense_weight)
        ctx.geometry, ctx.has_bias = geometry, bias is not None
        return run(x)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight.to(grad.dtype), grad, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, stride, padding,
                                                 dilation).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.float().sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


@functools.lru_cache(maxsize=None)
def _cuda_kernel():
    from kernels.cuda_build import build_regroup_kernel
    return build_regroup_kernel()


def emulate_kernel(x, tables, out_channels, extents, stride, padding):
    """The CUDA kernel's arithmetic on the CPU, read from the same tables:
    out[n, task_row[t], oh, ow] = sum_j w[t, j] * x[n, c_j, oh*sh - ph + dy_j, ow*sw - pw + dx_j]."""
    n, _, h, w = x.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - extents[0]) // sh + 1, (w + 2 * pw - extents[1]) // sw + 1
    padded = F.pad(x, (pw, pw, ph, ph))  # zero outside: the kernel's bounds check
    out = x.new_zeros(n, out_channels, oh, ow)
    starts, counts = tables["col_start"].long(), tables["ncols"].long()
    for t in range(len(tables["task_row"])):
        b = int(tables["task_block"][t])
        first, count = int(starts[b]), int(counts[b])
        w0 = int(tables["task_w_start"][t])
        acc = x.new_zeros(n, oh, ow)
        for j in range(first, first + count):
            c, dy, dx = int(tables["col_c"][j]), int(tables["col_dy"][j]), int(tables["col_dx"][j])
            acc += tables["w_all"][w0 + j - first] * padded[:, c, dy: dy + sh * (oh - 1) + 1: sh, dx: dx + sw * (ow - 1) + 1: sw]
        out[:, int(tables["task_row"][t])] = acc
    return out


def gather_buffer(owner, x, channels, params):
    """A tensor [n, channels, h, w] laid out like x, kept on `owner` and reused
    for a gathered input that only the next convolution reads (None when
    autograd needs it or while compiling): large fresh allocations cost page
    faults on every call (a 64 x 78 x 32 x 32 fp32 gather: 11.6 ms fresh,
    ~2.5 ms reused, on this project's 2-core CPU)."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return None
    if torch.compiler.is_compiling():  # a traced graph allocates its own buffers (and cannot write into ours)
        return None
    n, _, h, w = x.shape
    fmt = memory_format_of(x)
    key = (n, channels, h, w, x.dtype, x.device, fmt)
    if getattr(owner, "_buffer_key", None) != key:
        owner._buffer = torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        owner._buffer_key = key
    return owner._buffer


def select_channels(x, index, out=None):
    """x.index_select(1, index) (into `out` when given). A channels-last x is
    gathered through its [pixels, channels] view with torch.gather, several
    times faster there than a 4-D or 2-D index_select."""
    n, c, h, w = x.shape
    if is_channels_last(x):
        flat = x.permute(0, 2, 3, 1).reshape(-1, c)
        dest = None if out is None else out.permute(0, 2, 3, 1).view(-1, len(index))
        picked = torch.gather(flat, 1, index.expand(flat.shape[0], -1), out=dest)
        return picked.view(n, h, w, len(index)).permute(0, 3, 1, 2)
    return torch.index_select(x, 1, index, out=out) if out is not None else x.index_select(1, index)


@torch.library.custom_op("sparse_tickets::gather_channels", mutates_args=())
def gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """select_channels as one opaque operator, for torch.compile: inductor's
    own loop for an indexed channel gather in channels-last runs 1.3-2x
    slower than select_channels' torch.gather (AVX2 EPYC, 2 threads)."""
    return select_channels(x, index)


@gather_channels.register_fake
def _(x, index):
    n, _, h, w = x.shape
    return torch.empty((n, index.shape[0], h, w), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@torch.no_grad()
def regroup_model(model, infos, unit="weight", example_input=None, repeats=5, kernel="auto"):
    """Replace every masked convolution that regroup gave blocks (`infos`
    from pruner.regroup.regroup_mask) by a RegroupedConv2d; layers without a
    block keep their masked convolution. With `example_input`, each layer is
    first timed on its real input and keeps its masked dense convolution where
    the block path is slower (on a GPU: CUDA-graph replays, so Python's launch
    overhead does not decide; on the CPU: alternating medians of `repeats`).
    Modifies `model`; returns it and {layer: "regrouped" | "dense (faster)" | "no block"}."""
    modules = dict(model.named_modules())
    candidates = {name: RegroupedConv2d.from_conv(modules[name], info.blocks, unit, kernel)
                  for name, info in infos.items() if not info.kept_mask and info.blocks}
    inputs = layer_inputs(model, candidates, example_input) if example_input is not None else {}
    choice = {name: "no block" for name in infos}
    for name, regrouped in candidates.items():
        x = inputs.get(name)
        if x is not None and _dense_is_faster(modules[name], regrouped, x, repeats):
            choice[name] = "dense (faster)"
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, regrouped)
        choice[name] = "regrouped"
    return model, choice


def _dense_is_faster(conv, regrouped, x, repeats):
    weight = conv.weight.detach().clone()  # the masked weight, multiplied once here rather than on every call

    def dense(inp):
        return conv._conv_forward(inp, weight, conv.bias)
    if x.is_cuda:
        from utils.timing import graph_timings
        t = graph_timings({"dense": (dense, [x] * 8), "regrouped": (regrouped, [x] * 8)}, max(repeats, 10))
        return t["dense"]["median"] < t["regrouped"]["median"]
    t = alternating_medians({"dense": lambda: dense(x), "regrouped": lambda: regrouped(x)}, x.device, repeats, warmup=1)
    return t["dense"] < t["regrouped"]


@torch.no_grad()
def layer_inputs(model, names, example_input):
    """{layer name: its input tensor} from one eval-mode pass of `example_input`."""
    captured, hooks = {}, []
    for name, module in model.named_modules():
        if name in names:
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: captured.__setitem__(name, i[0].detach())))
    try:
        model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    return captured
