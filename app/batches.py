"""Feeding the training loop and evaluation: one interface, two paths.

- `epoch_order`: the images of one epoch as batches of indices: a permutation
  drawn from the epoch's seed (or the stored order, for evaluation) cut into
  global batches of --batch_size; under torchrun rank r takes items r, r+W,
  ... of every global batch, and a last global batch with fewer images than
  ranks joins the one before, so every image is seen exactly once an epoch
  and no rank gets an empty batch.
- `DeviceBatches`, the default for datasets held in memory (digits,
  CIFAR-10/100: `app.splits.InMemory`): the split's images (uint8) and labels
  are moved to the training device once; each batch is gathered there, and
  the training split's random crop (zero padding, offsets uniform over the
  2p+1 positions of each axis) and horizontal flip (probability 1/2) are
  drawn per image for the whole epoch from its seed, on the CPU so that every
  device draws the same, then applied to the batch as tensor ops. Nothing in
  an epoch waits for the host.
- `LoaderBatches`: torch's DataLoader over the per-image transforms (folder
  datasets, and in-memory ones with --per_image, the reference the device
  path is tested against), one pool of workers (`LoaderPool`) shared by a
  training state's splits and persisting across its epochs, pinned memory
  and prefetching on CUDA. Each item's
  augmentation is seeded from (epoch seed, image index), so an image comes
  out the same whichever worker, and however many workers, took it, and a
  resumed run draws what an uninterrupted one drew.

Both: `set_epoch(seed)` before an epoch, `len()`, and iteration yields
(images float in [0, 1], labels) on the device (channels-last on CUDA).
"""
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from app.splits import InMemory
from utils.errors import InvalidInput

PREFETCH_BATCHES = 4  # per loader worker: a few batches ahead absorbs the spread of JPEG decode times


def usable_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device, local_ranks=1):
    """--workers when not given, for the per-image path. On CUDA every core
    this process may use, shared among the ranks of the node: decoding and
    augmenting a 224x224 JPEG costs a core about 2-3 ms (~400 images/s),
    while one H100/H200 trains ResNet-50 at ~3,000 images/s, so a GPU needs
    8 or more cores and no machine has too many. On the CPU, 1: the model's
    own threads need the cores, and one worker decodes far faster than a
    CPU trains."""
    if device.type != "cuda":
        return 1
    return max(1, usable_cores() // max(1, local_ranks))


def epoch_order(n, batch_size, seed=None, rank=0, world=1):
    """[index tensor per batch] of one epoch for `rank` of `world`: a
    permutation seeded by `seed` (None: 0..n-1 in order) in global batches of
    `batch_size`, rank r taking positions r, r+W, ... of each."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else torch.arange(n)
    bounds = list(range(0, n, batch_size)) + [n]
    if world > 1 and len(bounds) > 2 and bounds[-1] - bounds[-2] < world:
        del bounds[-2]  # a last global batch too small to give every rank an image joins the one before
    return [order[start:end][rank::world] for start, end in zip(bounds, bounds[1:])]


def crop_flip_draws(n, padding, flip, seed):
    """(offsets [n, 2] int64 in 0..2*padding: top and left of each image's
    crop in its padded copy, flips [n] bool) for the n images of a split,
    drawn on the CPU from `seed` (uniform offsets, flips with probability 1/2,
    independently per image)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool() if flip else torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def crop_flip(images, offsets, flips, padding):
    """A batch [B, C, H, W] (any dtype) cropped back to H x W from its copy
    padded by `padding` zero pixels per side, at `offsets` [B, 2] (top, left),
    then mirrored left-right where `flips` [B]: torchvision's
    RandomCrop(size, padding) and RandomHorizontalFlip for given draws. One
    gather: each output pixel's place in the padded image, the flip folded
    into the column it reads."""
    b, c, h, w = images.shape
    if padding:
        images = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = offsets[:, 0:1] + torch.arange(h, device=device)  # [B, H]
    cols = torch.arange(w, device=device).expand(b, w)
    cols = torch.where(flips.view(b, 1), w - 1 - cols, cols) + offsets[:, 1:2]  # [B, W]
    index = (rows.view(b, h, 1) * (w + 2 * padding) + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return images.flatten(2).gather(2, index).view(b, c, h, w)


def as_input(images, device):
    """Float images in [0, 1] as the model takes them: uint8 / 255 (what
    torchvision's ToTensor computes), channels-last on CUDA."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


class EpochPlan:
    """What both paths share: a split of `n` images cut into batches of
    `batch_size` (this rank's share of each), shuffled and augmented per
    epoch from the seed set_epoch gives when it trains, in order otherwise."""

    def __init__(self, n, batch_size, train, rank=0, world=1):
        self.n, self.batch_size, self.train, self.rank, self.world = n, batch_size, train, rank, world
        self.seed = 0

    def set_epoch(self, seed):
        self.seed = seed

    def __len__(self):
        return len(epoch_order(self.n, self.batch_size, None, self.rank, self.world))

    def order(self):
        """This epoch's batches of indices (epoch_order)."""
        return epoch_order(self.n, self.batch_size, self.seed if self.train else None, self.rank, self.world)


class DeviceBatches(EpochPlan):
    """Batches of an InMemory split gathered and augmented on `device` (module docstring)."""

    path = "device-resident"

    def __init__(self, memory, batch_size, device, train, rank=0, world=1):
        super().__init__(len(memory.labels), batch_size, train, rank, world)
        self.images, self.labels = memory.images.to(device), memory.labels.to(device)
        self.padding, self.flip = (memory.crop_padding, memory.flip) if train else (0, False)
        self.device = device

    def draws(self):
        """(crop offsets, flips) of every image of the split this epoch (crop_flip_draws)."""
        return crop_flip_draws(self.n, self.padding, self.flip, self.seed ^ 0x5EED)

    def __iter__(self):
        batches = self.order()
        sizes = [len(b) for b in batches]
        order = torch.cat(batches).to(self.device)  # one copy an epoch; the batches are slices of it
        augment = self.padding or self.flip
        if augment:
            offsets, flips = (t.to(self.device) for t in self.draws())
        for index in order.split(sizes):
            images = self.images.index_select(0, index)
            if augment:
                images = crop_flip(images, offsets.index_select(0, index), flips.index_select(0, index), self.padding)
            yield as_input(images, self.device), self.labels.index_select(0, index)


def item_seed(epoch_seed, index):
    """The seed of one image's augmentation in one epoch (a 63-bit mix of the two)."""
    return (int(epoch_seed) * 6364136223846793005 + int(index) * 1442695040888963407 + 1) % (2**63 - 1)


class SeededItems(Dataset):
    """The splits of a LoaderPool as one dataset, indexed by (split, index,
    epoch seed): each item's random transforms draw from torch's CPU
    generator seeded by item_seed, whose state is put back afterwards so the
    caller's stream is untouched."""

    def __init__(self, splits):
        self.splits = splits

    def __len__(self):
        return sum(len(split) for split in self.splits)

    def __getitem__(self, key):
        split, index, seed = key
        generator = torch.default_generator  # the CPU generator torchvision's transforms draw from
        state = generator.get_state()  # 3 us with the reseed; torch.manual_seed in a fork_rng costs 200 us
        try:
            generator.manual_seed(item_seed(seed, index))
            return self.splits[split][index]
        finally:
            generator.set_state(state)


class _EpochBatches(EpochPlan):
    """A batch sampler of (split, index, epoch seed) lists in epoch_order."""

    def __init__(self, split, n, batch_size, train, rank, world):
        super().__init__(n, batch_size, train, rank, world)
        self.split = split

    def __iter__(self):
        for batch in self.order():
            yield [(self.split, i, self.seed) for i in batch.tolist()]


def loader_path(workers):
    """How summary.json names the per-image path with `workers` processes."""
    return f"per-image (DataLoader, {workers} worker{'s' if workers != 1 else ''})"


class LoaderPool:
    """One DataLoader, and so one set of worker processes persisting across
    epochs, for all the per-image splits of a training run: training,
    validation and test take turns on it (they never run at once), so a
    node holds `workers` processes, not three idle sets beside the busy one,
    each with its copy of a dataset's file list. Splits join before the
    first batch is drawn, when the workers start. Also its own batch
    sampler: it draws the batches of the split whose turn it is."""

    def __init__(self, device, workers):
        self.device, self.workers = device, workers
        self.splits, self.turn, self.loader = [], None, None

    def join(self, dataset):
        """Add a split; its number in the pool."""
        if self.loader is not None:
            raise RuntimeError("a split joins a LoaderPool before its workers start")
        self.splits.append(dataset)
        return len(self.splits) - 1

    def __len__(self):
        return len(self.turn)

    def __iter__(self):
        return iter(self.turn)

    def batches(self, turn):
        """The batches of `turn` (an _EpochBatches) on the device, decoded by the pool's workers."""
        if self.loader is None:
            self.loader = DataLoader(SeededItems(self.splits), batch_sampler=self, num_workers=self.workers,
                                     persistent_workers=self.workers > 0, pin_memory=self.device.type == "cuda",
                                     prefetch_factor=PREFETCH_BATCHES if self.workers > 0 else None,
                                     generator=torch.Generator().manual_seed(0))  # worker seeds: not the global RNG
        self.turn = turn  # read when the loop below starts: the workers' first batches come from it
        for images, labels in self.loader:
            yield (as_input(images.to(self.device, non_blocking=True), self.device),
                   labels.to(self.device, non_blocking=True))


class LoaderBatches:
    """One split's batches through a LoaderPool's workers (its own pool
    unless `pool` is given; module docstring)."""

    def __init__(self, dataset, batch_size, device, train, workers, rank=0, world=1, pool=None):
        self.pool = pool if pool is not None else LoaderPool(device, workers)
        self.sampler = _EpochBatches(self.pool.join(dataset), len(dataset), batch_size, train, rank, world)
        self.device, self.path = device, loader_path(self.pool.workers)

    def set_epoch(self, seed):
        self.sampler.seed = seed

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        return self.pool.batches(self.sampler)


def device_resident(dataset, per_image=False):
    """Whether `dataset` takes the device-resident path: it is held in memory and --per_image was not asked."""
    return not per_image and isinstance(getattr(dataset, "in_memory", None), InMemory)


def batches(dataset, batch_size, device, train, workers, per_image=False, rank=0, world=1, pool=None):
    """DeviceBatches for a split held in memory (unless `per_image`), else
    LoaderBatches (on `pool`'s workers where given)."""
    if len(dataset) < world:  # a rank without an image would train on an empty batch or wait for the others
        raise InvalidInput(f"a split of {len(dataset)} image(s) cannot be shared by {world} ranks: "
                           "each needs at least one (fewer ranks, or more data)")
    if device_resident(dataset, per_image):
        return DeviceBatches(dataset.in_memory, batch_size, device, train, rank, world)
    return LoaderBatches(dataset, batch_size, device, train, workers, rank, world, pool)
