"""Triton kernel for the regrouped convolution's forward pass: an implicit
GEMM whose K dimension is gathered (docs/design.md §7).

    y[m, row] = bias[row] + sum_k  x[pixel(m) + shift(tap_k) + channel_k] * w[k, row]

M runs over output pixels (N*OH*OW; input and output channels-last, so a
pixel's channels are contiguous); a program's N tile is up to BLOCK_N rows of
one block (blocks with the same columns merged first); K is that block's
(tap, input channel) columns, stepped through in chunks of BLOCK_K channels
of one tap, so the bounds check is one bit per pixel and a chunk reads the
same few cache lines of each pixel. Weight unit: a chunk lists its channels
in pairs (2p, 2p+1) — the pair makes K the contiguous axis when Triton lays
out the gathered tile (Triton 3.6 and 3.8 break ties between equally
unknown axes in opposite directions) — and slots outside the block carry
zero weights. Channel unit: the blocks' input channels are gathered once
into one copy, and a chunk is BLOCK_K consecutive channels of it (16-byte
loads). All blocks of a layer are one launch: grid = (pixel tiles, tasks),
a task being one row tile of one block, longest first. Output rows outside
every block form tasks without chunks: the kernel itself writes their bias
(or zeros), so no output buffer needs clearing.

That is the "gather" variant. The "tile" variant (_tile_kernel) computes
channel-unit layers (whose input size is a multiple of the stride) from
rectangular boxes instead: see its docstring. On a GPU the tuner chooses between them per layer shape.

Block weights are packed per (dtype, weights version, device) into
[chunks, BLOCK_K, BLOCK_N] tiles, one set per task, and cached by
RegroupedConv2d. On a GPU the variant and tiles (BLOCK_M, warps, stages) are
tuned per layer shape (triton.testing.do_bench over GPU_CONFIGS and
TILE_CONFIGS, cached by shape); the interpreter uses one small fixed
configuration, with the tile variant wherever it applies.

With TRITON_INTERPRET=1 in the environment before triton is first imported
(triton decorates its own library at import), the kernel runs on CPU tensors
in Triton's interpreter; its bf16 dot is wrong and it ignores TF32, so bf16
and TF32 are checked on a GPU only. Measured on an H200 the gather variant
is correct in every precision but slower than cuDNN; the tile variant has
not run on a GPU yet (docs/gpu/NOTES.md).
"""
import functools
import os
import sys

import torch

TILE_ROWS = (16, 32, 64, 128)  # BLOCK_N candidates: tl.dot needs at least 16
MACS_PER_GATHERED_LOAD = 64  # tensor-core MACs that cost about as much as one gathered element load (H100-class)
INTERPRETER_CONFIG = {"BLOCK_M": 32, "num_warps": 1, "num_stages": 1}
GPU_CONFIGS = [  # (BLOCK_M, num_warps, num_stages) of the "gather" variant; the first is the untuned default
    (64, 4, 3), (128, 4, 3), (64, 4, 2), (128, 8, 3),
]
TILE_CONFIGS = [  # the same for the "tile" variant (channel unit): boxes of 128 pixels feed the bulk copies
    (128, 4, 3), (128, 8, 4), (64, 4, 3),
]
VARIANTS = ("gather", "tile")
MAX_TAPS = 31  # a pixel's in-bounds taps are bits of one int32
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device):
    """Why the Triton path cannot run on `device` (None when it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton; wheels exist for Linux x86-64)"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return f"the Triton kernel runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 (got a {device.type} tensor)"


@functools.lru_cache(maxsize=None)
def _kernel(interpret):
    """The jitted kernel, decorated on first use; `interpret` keys the cache
    (triton.jit reads TRITON_INTERPRET when decorating)."""
    import triton
    import triton.language as tl

    # Shapes stay run-time values (no recompilation per layer shape) except C_IN, whose divisibility by 16
    # lets Triton load channel pairs as one 32-bit word; tiles, taps, dtype and precision compile.
    @triton.jit(do_not_specialize=["M", "H", "W", "OH", "OW", "C_OUT", "stride_h", "stride_w", "pad_h", "pad_w",
                                   "dil_h", "dil_w"])
    def regrouped_conv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, tasks_ptr, rows_ptr, chunk_tap_ptr, chunk_c_ptr,
                              M, C_IN, H, W, OH, OW, C_OUT, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                              KH: tl.constexpr, KW: tl.constexpr, CONTIGUOUS: tl.constexpr,
                              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        task = tl.program_id(1)
        first_chunk = tl.load(tasks_ptr + task * 3)
        num_chunks = tl.load(tasks_ptr + task * 3 + 1)
        w_start = tl.load(tasks_ptr + task * 3 + 2)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        ow = offs_m % OW
        oh = (offs_m // OW) % OH
        n = offs_m // (OW * OH)
        ih0 = oh * stride_h - pad_h  # top-left input pixel of each output pixel's window
        iw0 = ow * stride_w - pad_w
        pixel = ((n * H + ih0) * W + iw0) * C_IN
        valid = tl.zeros((BLOCK_M,), dtype=tl.int32)  # bit t: tap t of this output pixel lies inside the input
        for t in tl.static_range(KH * KW):
            ih = ih0 + (t // KW) * dil_h
            iw = iw0 + (t % KW) * dil_w
            inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            valid = valid | (inside.to(tl.int32) << t)
        offs_k = tl.arange(0, BLOCK_K)
        offs_n = tl.arange(0, BLOCK_N)
        w_tile = w_ptr + w_start + offs_k[:, None] * BLOCK_N + offs_n[None, :]

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j in range(0, num_chunks):
            # A chunk is BLOCK_K channels (in pairs 2p, 2p+1) of one tap: the bounds check is one bit per pixel,
            # and a pixel's entries lie in that input pixel's few cache lines. The pairs make K the contiguous
            # axis for Triton's layout choice, so a warp reads one pixel's channels per instruction.
            chunk = first_chunk + j
            tap = tl.load(chunk_tap_ptr + chunk)
            shift = ((tap // KW) * dil_h * W + (tap % KW) * dil_w) * C_IN
            if CONTIGUOUS:  # channel unit: the chunk is BLOCK_K consecutive channels of the gathered input
                c = tl.multiple_of(tl.load(chunk_c_ptr + chunk), BLOCK_K) + offs_k
            else:
                c = tl.max_contiguous(tl.multiple_of(tl.load(chunk_c_ptr + chunk * BLOCK_K + offs_k), 2), 2)
            inside = ((valid >> tap) & 1) != 0
            a = tl.load(x_ptr + (pixel + shift)[:, None] + c[None, :], mask=inside[:, None], other=0.0)
            b = tl.load(w_tile + j * (BLOCK_K * BLOCK_N))  # slots outside the block hold zero weights
            acc = tl.dot(a, b, acc, input_precision=PRECISION)

        rows = tl.load(rows_ptr + task * BLOCK_N + offs_n)
        row_ok = rows >= 0
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0)[None, :]  # zeros for a layer without bias
        out = y_ptr + offs_m[:, None] * C_OUT + rows[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])

    return regrouped_conv_kernel


@functools.lru_cache(maxsize=None)
def _tile_kernel(interpret):
    """The "tile" variant (channel unit), decorated on first use.

    A program computes a box of output pixels (BN_IMG images x BH rows x BW
    columns, BLOCK_M = their product) for one task. The input a tap reads
    for that box is a box too: with stride 1 the same box shifted by the tap;
    with stride s, every s-th pixel, which is a plain box of the gathered
    copy viewed as [N, H/s, s, W/s, s*C] (a row's parity is an index, a
    column's parity an offset into the channels). Each K step is then one
    rectangular [BN_IMG, BH, 1, BW, BLOCK_K] load through a tensor
    descriptor (the bulk-copy engine on Hopper; coordinates outside the
    image read zeros, which is the padding). K steps run tap-major over the
    task's chunks of BLOCK_K consecutive channels."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["N", "OH", "OW", "C_OUT", "C_IN", "pad_h", "pad_w", "dil_h", "dil_w"])
    def regrouped_conv_tile_kernel(x_desc, w_desc, bias_ptr, y_ptr, tasks_ptr, rows_ptr, chunk_c_ptr,
                                   N, OH, OW, C_OUT, C_IN, pad_h, pad_w, dil_h, dil_w,
                                   KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                                   PRECISION: tl.constexpr,
                                   BN_IMG: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        BLOCK_M: tl.constexpr = BN_IMG * BH * BW
        pid_m = tl.program_id(0)
        task = tl.program_id(1)
        tiles_w = tl.cdiv(OW, BW)
        tiles_h = tl.cdiv(OH, BH)
        ow0 = (pid_m % tiles_w) * BW
        oh0 = ((pid_m // tiles_w) % tiles_h) * BH
        n0 = (pid_m // (tiles_w * tiles_h)) * BN_IMG
        first_chunk = tl.load(tasks_ptr + task * 3)
        num_chunks = tl.load(tasks_ptr + task * 3 + 1)
        w_start = tl.load(tasks_ptr + task * 3 + 2)
        per_tap = num_chunks // (KH * KW)  # a channel-unit block reads the same channels at every tap
        c_first = tl.load(chunk_c_ptr + first_chunk)

        w_row = w_start // BLOCK_N  # packed weights seen as [rows of BLOCK_N]: a chunk is BLOCK_K of them
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j in range(0, num_chunks):
            tap = j // per_tap
            c = c_first + (j - tap * per_tap) * BLOCK_K
            # input row s*oh + dy - pad = s*(oh + q) + r: q shifts the box, r picks the parity (both >= 0 after
            # adding s*pad, as Triton's integer division truncates)
            dy = (tap // KW) * dil_h + SH * pad_h - pad_h
            dx = (tap % KW) * dil_w + SW * pad_w - pad_w
            a = x_desc.load([n0, oh0 + dy // SH - pad_h, dy % SH, ow0 + dx // SW - pad_w, (dx % SW) * C_IN + c])
            a = tl.reshape(a, (BLOCK_M, BLOCK_K))
            b = w_desc.load([w_row + j * BLOCK_K, 0])  # slots outside the block hold zero weights
            acc = tl.dot(a, b, acc, input_precision=PRECISION)

        offs_n = tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        n = n0 + offs_m // (BH * BW)
        oh = oh0 + (offs_m // BW) % BH
        ow = ow0 + offs_m % BW
        m_ok = (n < N) & (oh < OH) & (ow < OW)  # a box may overhang the batch or the image
        rows = tl.load(rows_ptr + task * BLOCK_N + offs_n)
        row_ok = rows >= 0
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0)[None, :]
        out = y_ptr + (((n * OH + oh) * OW + ow) * C_OUT)[:, None] + rows[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])

    return regrouped_conv_tile_kernel


def _tile_rows(row_counts, col_counts):
    """BLOCK_N for a layer: the candidate with the lowest modelled cost, where
    a task of K columns costs K gathered loads plus K * BLOCK_N MACs (padded
    rows included) at MACS_PER_GATHERED_LOAD MACs per load."""
    def cost(tile):
        return sum(-(-r // tile) * k * (1 + tile / MACS_PER_GATHERED_LOAD) for r, k in zip(row_counts, col_counts))
    return min(TILE_ROWS, key=cost)


def chunk_size(dtype):
    """BLOCK_K: 64 bytes of one pixel's channels (16 fp32 or 32 16-bit values)."""
    return 16 if dtype == torch.float32 else 32


def build_structure(blocks, unit, out_channels, in_channels, kernel_size, dilation):
    """The layer's blocks as the kernel sees them (CPU tensors): blocks with
    the same columns merged, each group's columns as (tap, input channel)
    sorted tap-major, rows tiled by BLOCK_N; chunk tables per BLOCK_K are
    made by `chunks`."""
    kh, kw = kernel_size
    dh, dw = dilation
    merged = {}  # regroup splits a part's rows by nn; one task table per column set is enough here
    for b, (rows, cols) in enumerate(blocks):
        merged.setdefault(tuple(cols.tolist()), []).append((b, rows))
    groups = []
    for cols, members in merged.items():
        cols = torch.tensor(cols, dtype=torch.long)
        if unit == "channel":  # column j of a channel-unit block is every tap of input channel cols[j]
            tap = torch.arange(kh * kw).repeat_interleave(len(cols))
            channel = cols.repeat(kh * kw)
            order = None  # block weights are permuted to tap-major when packed
        else:  # unfolded column index c * kh * kw + tap
            channel, tap = cols // (kh * kw), cols % (kh * kw)
            order = torch.argsort(tap * in_channels + channel, stable=True)
            channel, tap = channel[order], tap[order]
        groups.append({"members": members, "rows": torch.cat([r for _, r in members]), "channel": channel,
                       "tap": tap, "order": order, "cols": cols})
    covered = torch.zeros(out_channels, dtype=torch.bool)
    for g in groups:
        covered[g["rows"]] = True
    tile = _tile_rows([len(g["rows"]) for g in groups], [len(g["channel"]) for g in groups])
    if kh * kw > MAX_TAPS:
        raise ValueError(f"the Triton kernel takes kernels of at most {MAX_TAPS} taps, got {kh}x{kw}: "
                         "use kernel='cuda' or 'cpu'")
    return {"tile": tile, "groups": groups, "unit": unit, "kernel_size": kernel_size, "dilation": dilation,
            "in_channels": in_channels,
            "extent": (dh * (kh - 1) + 1, dw * (kw - 1) + 1), "uncovered": torch.nonzero(~covered).flatten(),
            "chunks": {}}


def chunks(structure, block_k):
    """Task and chunk tables for BLOCK_K = block_k (cached in `structure`).
    tasks [T, 3]: first chunk, chunk count, offset of the task's packed
    weights; rows [T * BLOCK_N] (-1 pads); per chunk its tap and its
    channels (weight unit: block_k channels in pairs, _pair_chunks; channel
    unit: the first of block_k consecutive channels of the gathered copy,
    _channel_chunks). Tasks sorted longest first.
    `slots` maps each group's packed K positions to its column order (-1:
    none), for pack_weights."""
    if block_k in structure["chunks"]:
        return structure["chunks"][block_k]
    tile, in_channels = structure["tile"], structure["in_channels"]
    tasks, task_rows, chunk_tap, chunk_c, slots, gather = [], [], [], [], [], []
    first = w_start = 0
    for g in structure["groups"]:
        slot = []  # for each packed K position: index into the group's columns, or -1
        if structure["unit"] == "channel":
            _channel_chunks(g, block_k, structure["kernel_size"], gather, chunk_tap, chunk_c, slot)
        else:
            _pair_chunks(g, block_k, in_channels, chunk_tap, chunk_c, slot)
        count = len(slot) // block_k
        slots.append(torch.tensor(slot, dtype=torch.long))
        for r in range(0, len(g["rows"]), tile):
            tasks.append((first, count, w_start))
            task_rows.append(_padded(g["rows"][r: r + tile], tile))
            w_start += count * block_k * tile
        first += count
    for r in range(0, len(structure["uncovered"]), tile):  # no chunk: the kernel writes their bias or zeros
        tasks.append((0, 0, 0))
        task_rows.append(_padded(structure["uncovered"][r: r + tile], tile))
    order = sorted(range(len(tasks)), key=lambda t: -tasks[t][1])  # longest first
    table = {"tasks": torch.tensor([tasks[t] for t in order], dtype=torch.int32).reshape(-1, 3),
             "rows": torch.stack([task_rows[t] for t in order]).to(torch.int32).reshape(-1),
             "chunk_tap": torch.tensor(chunk_tap or [0], dtype=torch.int32),
             "chunk_c": torch.cat(chunk_c).to(torch.int32) if chunk_c else torch.zeros(block_k, dtype=torch.int32),
             "slots": slots, "block_k": block_k,
             "gather": torch.tensor(gather, dtype=torch.long) if gather else None}
    structure["chunks"][block_k] = table
    return table


def _pair_chunks(group, block_k, in_channels, chunk_tap, chunk_c, slot):
    """Weight unit: per tap, the channel pairs (2p, 2p+1) that hold a block
    column, block_k channels a chunk; the pair's other channel and the
    padding pairs (0, 1) map to no column (zero weights)."""
    for t in torch.unique_consecutive(group["tap"]).tolist():
        where = torch.nonzero(group["tap"] == t).flatten()
        column_of = dict(zip(group["channel"][where].tolist(), where.tolist()))
        entries = []  # (channel, its column in the group or -1)
        for p in sorted({c // 2 for c in column_of}):
            second = 2 * p + 1 if 2 * p + 1 < in_channels else 2 * p  # odd C_IN: the last pair repeats
            entries += [(2 * p, column_of.get(2 * p, -1)), (second, column_of.get(2 * p + 1, -1))]
        entries += [(0, -1), (min(1, in_channels - 1), -1)] * (-(len(entries) // 2) % (block_k // 2))
        for i in range(0, len(entries), block_k):
            chunk_tap.append(t)
            chunk_c.append(torch.tensor([c for c, _ in entries[i: i + block_k]]))
            slot += [column for _, column in entries[i: i + block_k]]


def _channel_chunks(group, block_k, kernel_size, gather, chunk_tap, chunk_c, slot):
    """Channel unit: the group's input channels are gathered into consecutive
    channels of one input copy (padded to block_k with a repeat of its first
    channel, weight zero); each tap then reads them as contiguous chunks."""
    kh, kw = kernel_size
    cols = group["cols"].tolist()
    offset = len(gather)
    gather += cols + cols[:1] * (-len(cols) % block_k)
    for t in range(kh * kw):
        for i in range(0, len(gather) - offset, block_k):
            chunk_tap.append(t)
            chunk_c.append(torch.tensor([offset + i]))
            slot += [t * len(cols) + j if j < len(cols) else -1 for j in range(i, i + block_k)]


def _padded(values, size):
    return torch.cat([values, torch.full((size - len(values),), -1, dtype=values.dtype)])


def pack_weights(structure, block_weights, dtype, device, block_k):
    """Every task's weights as [chunks, BLOCK_K, BLOCK_N] (zeros where a chunk
    or a row tile is padded), in the order of the tasks' weight offsets."""
    tile = structure["tile"]
    table = chunks(structure, block_k)
    tiles = []
    for g, slot in zip(structure["groups"], table["slots"]):
        parts = []
        for b, _ in g["members"]:
            w = block_weights[b].detach().float()
            if structure["unit"] == "channel":  # [rows, cols, kh, kw] -> [rows, (tap, col)]
                w = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
            else:
                w = w[:, g["order"]]
            parts.append(w)
        w = torch.cat(parts).t()  # [K, rows] in the group's column order
        w = torch.cat([w, w.new_zeros(1, w.shape[1])])[slot]  # [packed K, rows]: slot -1 reads the zero row
        w = torch.nn.functional.pad(w, (0, -w.shape[1] % tile))
        w = w.reshape(-1, block_k, w.shape[1] // tile, tile).permute(2, 0, 1, 3)  # [row tiles, chunks, K, tile]
        tiles.append(w.reshape(-1))
    flat = torch.cat(tiles) if tiles else torch.zeros(tile)
    return flat.to(device=device, dtype=dtype).contiguous()


def device_tables(structure, device, block_k, out_channels):
    table = chunks(structure, block_k)
    tables = {key: table[key].to(device) for key in ("tasks", "rows", "chunk_tap", "chunk_c")}
    tables["gather"] = None if table["gather"] is None else table["gather"].to(device)
    tables["zero_bias"] = torch.zeros(out_channels, device=device)
    return tables


def tf32_allowed():
    """The caller's TF32 choice for convolutions, as cuDNN reads it."""
    return bool(torch.backends.cudnn.allow_tf32)


def _config(bm, warps, stages, variant="gather"):
    return {"BLOCK_M": bm, "num_warps": warps, "num_stages": stages, "variant": variant}


def default_config(variant="gather"):
    """The untuned GPU configuration of a variant."""
    return _config(*(TILE_CONFIGS if variant == "tile" else GPU_CONFIGS)[0], variant)


def tile_variant_reason(structure, stride, input_hw=None):
    """Why the "tile" variant cannot compute this layer, on inputs of
    `input_hw` when given (None when it can)."""
    if os.environ.get("STRUCTLTH_TRITON_TILE", "1") == "0":
        return "the tile variant is switched off (STRUCTLTH_TRITON_TILE=0)"
    if structure["unit"] != "channel":
        return "the tile variant reads whole channel chunks: channel unit only"
    if input_hw is not None and any(size % s for size, s in zip(input_hw, stride)):
        return f"the tile variant views a strided input as boxes: its size {tuple(input_hw)} must be a multiple " \
               f"of the stride {tuple(stride)}"
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return "this Triton has no tensor descriptors (triton >= 3.4 has)"
    return None


def variants_for(structure, stride, input_hw=None):
    return ("gather",) + (("tile",) if tile_variant_reason(structure, stride, input_hw) is None else ())


def pixel_box(oh, ow, block_m):
    """(images, rows, columns) of a tile variant program's box of output
    pixels: whole rows where they fit, powers of two, block_m in all."""
    def pow2_at_least(v):
        return 1 << max(0, (int(v) - 1).bit_length())
    bw = min(pow2_at_least(ow), block_m)
    bh = min(pow2_at_least(oh), block_m // bw)
    return block_m // (bw * bh), bh, bw


def conv_forward(x, weights, tables, structure, bias, out_channels, stride, padding, out=None, config=None):
    """y = the regrouped convolution of x (any layout; read as channels-last),
    returned channels-last in x's dtype; `out` (channels-last, right shape and
    dtype) is written in place when given. `bias` is a float32 tensor of
    out_channels values or None; `config` fixes the tiles (default: tuned on a
    GPU, INTERPRETER_CONFIG in the interpreter)."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the Triton kernel takes float32, float16 or bfloat16 inputs, got {x.dtype}")
    reason = unavailable_reason(x.device)
    if reason:
        raise RuntimeError(reason)
    n, c_in, h, w = x.shape
    oh = (h + 2 * padding[0] - structure["extent"][0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - structure["extent"][1]) // stride[1] + 1
    x = x.contiguous(memory_format=torch.channels_last)
    if out is None:
        out = torch.empty((n, out_channels, oh, ow), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    if max(x.numel(), out.numel()) >= 2 ** 31:
        raise ValueError("the Triton kernel indexes with 32-bit offsets: split the batch")
    if tables["gather"] is not None:  # channel unit: every group's input channels side by side, channels-last
        flat = x.permute(0, 2, 3, 1).reshape(-1, c_in).index_select(1, tables["gather"])
        c_in = flat.shape[1]
        x = flat.view(n, h, w, c_in).permute(0, 3, 1, 2)
    precision = "ieee" if x.dtype == torch.float32 and not tf32_allowed() else "tf32"  # 16-bit inputs ignore it
    variants = variants_for(structure, stride, (h, w))
    if config is None and x.device.type == "cpu":  # the interpreter: the most specialised variant that applies
        config = dict(INTERPRETER_CONFIG, variant=variants[-1])
    elif config is None:  # layers of one shape share their tuned variant and tiles
        key = (x.device.index, x.dtype, precision, structure["tile"], *structure["kernel_size"], c_in, out_channels,
               n, h, w, stride, padding, variants)
        config = _tuned(key, variants, lambda cfg: _launch(x, weights, tables, structure, bias, out, stride,
                                                            padding, precision, cfg))
    variant = config.get("variant", "gather")
    if variant not in variants:
        raise ValueError(f"the '{variant}' variant cannot compute this layer: "
                         f"{tile_variant_reason(structure, stride, (h, w))}")
    _launch(x, weights, tables, structure, bias, out, stride, padding, precision, config)
    tables["config"] = config  # what this layer ran last, for reports
    return out


def _launch(x, weights, tables, structure, bias, out, stride, padding, precision, config):
    """One launch of `config`'s variant over the whole layer."""
    n, c_in, h, w = x.shape
    _, out_channels, oh, ow = out.shape
    kh, kw = structure["kernel_size"]
    num_tasks = tables["tasks"].shape[0]
    bias = tables["zero_bias"] if bias is None else bias
    tiles = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    constants = {"KH": kh, "KW": kw, "PRECISION": precision, "BLOCK_N": structure["tile"],
                 "BLOCK_K": chunk_size(x.dtype)}
    if config.get("variant", "gather") == "tile":
        from triton.tools.tensor_descriptor import TensorDescriptor
        images, rows, cols = pixel_box(oh, ow, config["BLOCK_M"])
        sh, sw = stride
        # the gathered copy, contiguous [n, h, w, channels], seen as [n, h/sh, sh, w/sw, sw * channels]
        boxes = x.permute(0, 2, 3, 1).reshape(n, h // sh, sh, w // sw, sw * c_in)
        x_desc = TensorDescriptor(boxes, list(boxes.shape), list(boxes.stride()),
                                  [images, rows, 1, cols, constants["BLOCK_K"]])
        packed = weights.view(-1, structure["tile"])  # every task's tiles are whole rows of BLOCK_N weights
        w_desc = TensorDescriptor(packed, list(packed.shape), list(packed.stride()), [constants["BLOCK_K"], structure["tile"]])
        grid = (-(-n // images) * -(-oh // rows) * -(-ow // cols), num_tasks)
        _tile_kernel(interpreting())[grid](
            x_desc, w_desc, bias, out, tables["tasks"], tables["rows"], tables["chunk_c"], n, oh, ow, out_channels,
            c_in, padding[0], padding[1], *structure["dilation"], SH=sh, SW=sw, BN_IMG=images, BH=rows, BW=cols,
            **constants, **tiles)
        return
    m = n * oh * ow
    _kernel(interpreting())[(-(-m // config["BLOCK_M"]), num_tasks)](
        x, weights, bias, out, tables["tasks"], tables["rows"], tables["chunk_tap"], tables["chunk_c"], m, c_in, h, w,
        oh, ow, out_channels, stride[0], stride[1], padding[0], padding[1], *structure["dilation"],
        CONTIGUOUS=tables["gather"] is not None, BLOCK_M=config["BLOCK_M"], **constants, **tiles)


_TUNED = {}  # shape key -> best config: a memo of a pure measurement, safe to share between runs


def candidates(variants):
    """Every configuration the tuner tries for a layer whose usable variants are `variants`."""
    return [_config(*c, "gather") for c in GPU_CONFIGS] + \
        ([_config(*c, "tile") for c in TILE_CONFIGS] if "tile" in variants else [])


def _tuned(key, variants, launch):
    """The fastest configuration for this shape, variants included
    (triton.testing.do_bench median, ~20 ms per configuration)."""
    if key in _TUNED:
        return _TUNED[key]
    if os.environ.get("STRUCTLTH_TRITON_CONFIG"):  # "BLOCK_M,num_warps,num_stages[,variant]": skip tuning
        fields = os.environ["STRUCTLTH_TRITON_CONFIG"].split(",")
        variant = fields[3] if len(fields) > 3 and fields[3] in variants else "gather"
        _TUNED[key] = _config(*(int(v) for v in fields[:3]), variant)
        return _TUNED[key]
    from triton.testing import do_bench
    timings = {}
    for config in candidates(variants):
        candidate = tuple(config.values())
        try:
            launch(config)  # compiles
        except Exception as err:  # a configuration this GPU cannot run (shared memory, registers)
            if "OutOfResources" in type(err).__name__ or "out of resource" in str(err).lower():
                continue
            if config["variant"] == "tile":  # this GPU or Triton cannot build the bulk-copy variant: keep gathering
                print(f"kernels.triton_conv: the tile variant failed ({type(err).__name__}: {str(err)[:200]}); "
                      "using the gather variant", file=sys.stderr)
                continue
            raise
        # do_bench clears the L2 before each timed call, which also keeps the GPU busy while Python
        # launches the kernel: the events then time the kernel, not the launch overhead.
        timings[candidate] = do_bench(lambda: launch(config), warmup=5, rep=20, return_mode="median")
    if not timings:
        raise RuntimeError("no Triton configuration fits this GPU")
    _TUNED[key] = _config(*min(timings, key=timings.get))
    return _TUNED[key]


def tuned_configs():
    """What the tuner chose so far (for reports): [(key, config)]."""
    return list(_TUNED.items())
