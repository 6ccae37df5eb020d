"""Training throughput: what an IMP run costs on a machine.

- `throughput`: the training step alone (app.training.train_step: forward,
  loss, backward, SGD step), dense or masked, eager or under torch.compile,
  on random data already on the device: the ceiling an epoch can reach;
- `epoch_seconds`: whole epochs of the training loop itself
  (app.training.train_one_epoch) fed by either path of app.batches;
- `loader_images_per_s`: a path's batches alone, without a model;
- `synthetic_cifar` / `synthetic_jpeg_folders`: CIFAR-shaped images held
  in memory and ImageNet-style JPEG folders, for machines without the data.
"""
import os
import time

import numpy as np
import torch
from PIL import Image

from app.training import amp_name as dtype_name, autocast_dtype, gradient_scaler, train_one_epoch, train_step
from utils.timing import summary


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def optimizer_for(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def throughput(model, batch, image_shape, num_classes, device, amp=True, compiled=False, steps=20, warmup=3,
               compile_mode=None, compile_backend="inductor", amp_name="auto"):
    """{images_per_s (median step), step_ms, p10/p90, compile_s, amp}: `steps`
    timed training steps of `model` (channels-last on CUDA) after `warmup`
    (the first compiles under torch.compile; its seconds are reported)."""
    model = model.to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, amp, amp_name)
    step = train_step(model, optimizer_for(model), gradient_scaler(device, dtype), device, dtype)
    if compiled:
        step = torch.compile(step, mode=compile_mode, backend=compile_backend)
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = torch.rand(batch, *image_shape, generator=generator).to(device).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    tic = sync(device)
    step(images, labels)
    first = sync(device) - tic
    for _ in range(max(0, warmup - 1)):
        step(images, labels)
    seconds = []
    for _ in range(steps):
        tic = sync(device)
        step(images, labels)
        seconds.append(sync(device) - tic)
    s = summary(seconds)
    return {"images_per_s": batch / s["median"], "images_per_s_p10": batch / s["p90"],
            "images_per_s_p90": batch / s["p10"], "step_ms": 1e3 * s["median"], "p10_ms": 1e3 * s["p10"],
            "p90_ms": 1e3 * s["p90"], "steps": steps, "batch": batch, "compile_s": first if compiled else None,
            "amp": dtype_name(dtype), "compiled": compiled}


class EpochRunner:
    """Whole training epochs of one model through app.training's loop (its
    step, its tallies, its host reads), any number of times."""

    def __init__(self, model, device, amp=True, amp_name="auto"):
        self.model, self.device = model.to(device), device
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        dtype = autocast_dtype(device, amp, amp_name)
        self.step = train_step(self.model, optimizer_for(self.model), gradient_scaler(device, dtype), device, dtype)

    def seconds(self, batches, seed=0):
        """Wall seconds of one epoch over `batches` (CUDA: until the device is done)."""
        batches.set_epoch(seed)
        tic = sync(self.device)
        train_one_epoch(self.model, batches, self.step, self.device, desc="benchmark epoch")
        return sync(self.device) - tic


def loader_images_per_s(batches, epochs=2):
    """Images per second of iterating `batches` alone (the device's work included)."""
    images, tic = 0, None
    for epoch in range(epochs + 1):  # the first warms up (workers start, the device data is placed)
        batches.set_epoch(epoch)
        if epoch == 1:
            tic = sync(batches.device)
        for _, labels in batches:
            images += len(labels) if epoch else 0
    return images / (sync(batches.device) - tic)


def dense_and_masked(arch, spec, sparsity, masked_label="masked"):
    """{"dense": model, masked_label: the same initial model pruned by one
    global magnitude step straight to `sparsity`} (both from seed 0)."""
    from app.datasets import model_for
    from pruner.magnitude import global_magnitude_prune
    from pruner.masking import apply_mask
    models = {}
    for variant in ("dense", masked_label):
        torch.manual_seed(0)
        models[variant] = model_for(arch, spec)
    apply_mask(models[masked_label], global_magnitude_prune(models[masked_label], sparsity))
    return models


def synthetic_cifar(n, num_classes=10, seed=0):
    """DataSplits of `n` random CIFAR-shaped training images held in memory
    (the CIFAR reader's classes: its per-image transforms and augmentation),
    with small validation and test splits."""
    from app.image_datasets import CIFAR_MEAN, CIFAR_STD, cifar_splits
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n + 2 * 64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n + 2 * 64).tolist()
    return cifar_splits(images[:n + 64], labels[:n + 64], images[n + 64:], labels[n + 64:],
                        [f"class{i}" for i in range(num_classes)], CIFAR_MEAN, CIFAR_STD, n_val=64)


def synthetic_jpeg_folders(root, n, size=256, num_classes=4, seed=0):
    """An ImageNet-layout tree at `root` (train/<class>/*.JPEG, `n` images of
    size x size with random pixels, and 4 per class under val/), read with
    the imagenet reader: its per-image decode and augmentation."""
    from app.datasets import load_dataset
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", 4 * num_classes)):
        for i in range(count):
            folder = os.path.join(root, split, f"n{i % num_classes:08d}")
            os.makedirs(folder, exist_ok=True)
            pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)  # blocky, JPEG-like content
            Image.fromarray(pixels).resize((size, size)).save(os.path.join(folder, f"img{i}.JPEG"), quality=90)
    return load_dataset("imagenet", root)


PATHS = ("per-image", "device-resident")


def path_batches(data, batch, device, path, workers=None):
    """The training batches of `data` through one path of app.batches (None where a split has no in-memory form)."""
    from app.batches import batches, default_workers, device_resident
    if path == "device-resident" and not device_resident(data.train):
        return None
    return batches(data.train, batch, device, True, default_workers(device) if workers is None else workers,
                   per_image=path == "per-image")


def epoch_rows(models, data, batch, device, *, repeats=3, workers=None, ceiling_steps=20, amp=True, say=print):
    """For each model (e.g. {"dense": ..., "masked": ...}): the step ceiling
    (throughput on device-resident random data), then whole epochs through
    each path, in rounds that alternate models and paths after one warm-up
    epoch each. Rows: {variant, path, images_per_s (median epoch) with p10
    and p90, of_ceiling}; the ceiling's row has path "step alone"."""
    from bench.network import copied
    spec = data.spec
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    n = len(data.train)
    rows, runners, feeds, ceilings = [], {}, {}, {}
    for variant, model in models.items():
        ceiling = throughput(copied(model), batch, shape, spec.num_classes, device, amp, steps=ceiling_steps)
        ceilings[variant] = ceiling["images_per_s"]
        rows.append({"variant": variant, "path": "step alone", "batch": batch, "amp": ceiling["amp"],
                     **{k: ceiling[k] for k in ("images_per_s", "images_per_s_p10", "images_per_s_p90")},
                     "of_ceiling": 1.0})
        say(f"  {variant}: step alone {ceiling['images_per_s']:.0f} images/s ({ceiling['step_ms']:.1f} ms a step of "
            f"{batch})")
        runners[variant] = EpochRunner(copied(model), device, amp)
    for path in PATHS:
        made = path_batches(data, batch, device, path, workers)
        if made is not None:
            feeds[path] = made
    samples = {(v, p): [] for v in models for p in feeds}
    for round_ in range(repeats + 1):  # round 0 warms up: loader workers start, device data is placed
        for variant, runner in runners.items():
            for path, batches in feeds.items():
                seconds = runner.seconds(batches, seed=round_)
                if round_:
                    samples[(variant, path)].append(n / seconds)
    for (variant, path), rates in samples.items():
        s = summary(rates)
        rows.append({"variant": variant, "path": feeds[path].path, "batch": batch,
                     "images_per_s": s["median"], "images_per_s_p10": s["p10"], "images_per_s_p90": s["p90"],
                     "epoch_images": n, "of_ceiling": s["median"] / ceilings[variant]})
    return rows


def loader_rows(data, batch, device, epochs=2):
    """Images/s of the batches alone, per CPU core: the per-image path in
    the main process (no workers) and the device-resident path, on one
    thread; their ratio."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        feeds = {path: path_batches(data, batch, device, path, workers=0) for path in PATHS}
        rates = {path: loader_images_per_s(batches, epochs) for path, batches in feeds.items() if batches is not None}
    finally:
        torch.set_num_threads(threads)
    return rates


def epoch_table(rows):
    """Printable lines of epoch_rows."""
    width = max([len("model")] + [len(r["variant"]) for r in rows])  # "masked (80%)" and the like
    lines = [f"  {'model':<{width}} {'path':<36} {'images/s':>10} {'p10-p90':>17} {'of ceiling':>10}"]
    for r in rows:
        spread = f"{r['images_per_s_p10']:.0f}-{r['images_per_s_p90']:.0f}"
        lines.append(f"  {r['variant']:<{width}} {r['path']:<36} {r['images_per_s']:10.0f} {spread:>17} "
                     f"{r['of_ceiling']:10.2f}")
    return lines
