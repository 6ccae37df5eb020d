"""Training throughput: images per second of the training step an IMP run
repeats (forward, loss, backward, SGD step), dense or masked, eager or
under torch.compile, on random data of one shape. What an IMP run costs on
a machine, apart from data loading."""
import time

import torch
import torch.nn.functional as F

from app.training import autocast
from utils.timing import summary


def train_step(model, optimizer, scaler, device, amp):
    """One training step of `model` on (images, labels), as app.training takes
    it: fp16 autocast with a gradient scaler on CUDA when `amp`."""
    def step(images, labels):
        with autocast(device, amp):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss
    return step


def throughput(model, batch, image_shape, num_classes, device, amp=True, compiled=False, steps=20, warmup=3,
               compile_mode=None, compile_backend="inductor"):
    """{images_per_s (median step), step_ms, p10/p90, compile_s}: `steps`
    timed training steps of `model` (channels-last on CUDA) after `warmup`
    (the first compiles under torch.compile; its seconds are reported)."""
    model = model.to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    step = train_step(model, optimizer, scaler, device, amp)
    if compiled:
        step = torch.compile(step, mode=compile_mode, backend=compile_backend)
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = torch.randn(batch, *image_shape, generator=generator).to(device).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)

    def synced():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    tic = synced()
    step(images, labels)
    first = synced() - tic
    for _ in range(max(0, warmup - 1)):
        step(images, labels)
    seconds = []
    for _ in range(steps):
        tic = synced()
        step(images, labels)
        seconds.append(synced() - tic)
    s = summary(seconds)
    return {"images_per_s": batch / s["median"], "step_ms": 1e3 * s["median"], "p10_ms": 1e3 * s["p10"],
            "p90_ms": 1e3 * s["p90"], "steps": steps, "batch": batch, "compile_s": first if compiled else None,
            "amp": amp and device.type == "cuda", "compiled": compiled}
