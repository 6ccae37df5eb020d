"""The one training loop and evaluation function every script uses.

`train_state` trains a (possibly masked) model for `train.epochs` epochs (a
TrainConfig) with SGD + warm-up + step decay, evaluates validation and test
accuracy after each epoch, writes `<prefix>checkpoint.pth.tar` every epoch
and `<prefix>model_SA_best.pth.tar` whenever validation accuracy improves,
and resumes from a checkpoint of the same state. Batches come from
app.batches (device-resident for in-memory datasets). On CUDA it trains
channels-last under autocast (bf16 where the GPU computes it, else fp16
with a gradient scaler, whose step reads the host once a step), and
otherwise the host does not wait inside an epoch: losses, accuracies and
the non-finite guard are tallied on the device and read once an epoch (and
every --print_freq steps).
"""
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from torch.nn.parallel import DistributedDataParallel

from app.batches import DeviceBatches, LoaderPool, batches, default_workers, device_resident, loader_path
from utils.checkpoint import save_atomic
from utils.errors import TrainingDiverged
from utils.runtime import epoch_seed, seed_everything


def build_optimizer(model, train):
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def build_scheduler(optimizer, train):
    """The learning rate per epoch: linear warm-up over --warmup epochs (per
    epoch here; warmup_per_iteration refines it step by step with
    --warmup_unit iteration), then 10x drops at --decreasing_lr."""
    drops = train.milestones()

    def factor(epoch):
        if epoch < train.warmup:
            return (epoch + 1) / train.warmup  # linear warm-up, per epoch
        return 0.1 ** sum(epoch >= m for m in drops)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_per_iteration(optimizer, train, epoch, steps):
    """set_lr(i) for step i of `epoch` while a per-iteration warm-up lasts
    (the original code's: --lr x (epoch*steps + i + 1) / (--warmup*steps)),
    else None: the epoch keeps the scheduler's rate."""
    if train.warmup_unit != "iteration" or epoch >= train.warmup:
        return None
    total = train.warmup * steps

    def set_lr(i):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * (epoch * steps + i + 1) / total
    return set_lr


def empty_result():
    return {"train_loss": [], "train_acc": [], "val_acc": [], "test_acc": [], "lr": [], "seconds": []}


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(train, device):
    """The autocast dtype of a run (None: full precision): autocast_dtype of its flags."""
    return autocast_dtype(device, train.amp, train.amp_dtype)


def autocast_dtype(device, amp=True, name="auto"):
    """CUDA only, unless `amp` is off: "auto" takes bf16 where the GPU
    computes it (Ampere, Hopper: no gradient scaler needed) and fp16 with a
    scaler elsewhere; "bf16" / "fp16" as named."""
    if not amp or device.type != "cuda":
        return None
    if name == "auto":
        return torch.bfloat16 if native_cuda_bf16(device) else torch.float16
    return AMP_DTYPES[name]


def native_cuda_bf16(device):
    """Whether the GPU of `device` computes bf16 in hardware (compute capability
    8.0 on: Ampere, Hopper). torch.cuda.is_bf16_supported() also says yes where
    bf16 is only emulated (Volta, Turing), where it is slow."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def amp_name(dtype):
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[dtype]


def autocast(device, dtype):
    """Autocast to `dtype` on `device` (None: off); the training loop's and bench.training's."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def gradient_scaler(device, dtype):
    """A GradScaler for fp16 autocast (bf16 has fp32's range and needs none), else None."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def train_step(model, optimizer, scaler, device, dtype):
    """step(images, labels) -> (loss, logits), both detached and left on the
    device: forward under autocast, cross-entropy, backward and the SGD step
    (through `scaler` for fp16). The step of the training loop and of
    bench.training's throughput."""
    def step(images, labels):
        with autocast(device, dtype):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach(), logits.detach()
    return step


class EpochTally:
    """What an epoch adds up, kept on the device so that no step waits for
    the host: the loss summed over images, correct predictions, and the
    first step whose loss was not finite (and that loss). `read()` is the
    one host sync (summed over ranks under torchrun)."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.seen = 0  # images: the host knows each batch's size

    def add(self, step, loss, logits, labels):
        first_bad = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_loss = torch.where(first_bad, loss.float(), self.bad_loss)
        self.loss += loss.double() * labels.size(0)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.size(0)

    def read(self, dist_ctx=None):
        """(mean loss, accuracy %, first non-finite step or None, its loss) so far."""
        totals = torch.stack([self.loss, self.correct.double(), (self.bad_step >= 0).double(),
                              torch.tensor(float(self.seen), dtype=torch.float64, device=self.loss.device)])
        if dist_ctx is not None:
            totals = dist_ctx.sum_tensor(totals)
        own = torch.stack([self.bad_step.double(), self.bad_loss.double()])  # this rank's, not summed
        loss, correct, diverged, seen, bad_step, bad_loss = torch.cat([totals, own]).tolist()  # the one read
        bad_step = int(bad_step)
        if diverged and bad_step < 0:
            bad_step = None  # another rank's loss went non-finite
        return loss / max(1.0, seen), 100.0 * correct / max(1.0, seen), (bad_step if diverged else -1), bad_loss


def train_one_epoch(model, batches, step, device, *, desc="train", print_freq=0, dist_ctx=None, set_lr=None):
    """One pass over `batches` with `step` (train_step); returns (mean loss,
    accuracy %), over all ranks under DDP. The host reads the device's
    tallies at the end and every `print_freq` steps, never in between. A
    non-finite loss raises TrainingDiverged when read (the end of the epoch
    at the latest), so no checkpoint ever holds what followed it.
    `set_lr(i)`: called before step i (warm-up per iteration)."""
    model.train()
    tally = EpochTally(device)
    bar = tqdm(batches, desc=desc, leave=False, disable=None, dynamic_ncols=True)
    for i, (images, labels) in enumerate(bar):
        if set_lr is not None:
            set_lr(i)
        loss, logits = step(images, labels)
        tally.add(i, loss, logits, labels)
        if print_freq and (i + 1) % print_freq == 0 and dist_ctx is None:  # under DDP every rank reads at the end
            mean, acc, bad_step, bad_loss = tally.read()
            _stop_if_diverged(desc, bad_step, bad_loss)
            if bar.disable:
                print(f"  {desc} [{i + 1}/{len(batches)}] loss {mean:.4f} acc {acc:.2f}%", flush=True)
            else:
                bar.set_postfix(loss=f"{mean:.3f}", acc=f"{acc:.1f}")
    mean, acc, bad_step, bad_loss = tally.read(dist_ctx)
    _stop_if_diverged(desc, bad_step, bad_loss)
    return mean, acc


def _stop_if_diverged(desc, bad_step, bad_loss):
    if bad_step is None or bad_step >= 0:
        where = f"at batch {bad_step}" if bad_step is not None else "on another rank"
        raise TrainingDiverged(f"{desc}: loss became {bad_loss if bad_step is not None else 'non-finite'} {where}; "
                               "lower --lr or check the data (the last checkpoint is intact)")


@torch.no_grad()
def evaluate(model, batches, device, dtype=None, dist_ctx=None):
    """Top-1 accuracy (%) of `model` on `batches` in eval mode (under DDP,
    this rank's share; the counts are summed), read once at the end."""
    model.eval()
    correct, seen = torch.zeros((), dtype=torch.int64, device=device), 0
    for images, labels in batches:
        with autocast(device, dtype):
            logits = model(images)
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.size(0)
    totals = torch.stack([correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if dist_ctx is not None:
        totals = dist_ctx.sum_tensor(totals)
    correct, seen = totals.tolist()
    return 100.0 * correct / max(1.0, seen)


def best_summary(result):
    """Best validation accuracy, its epoch, and the test accuracy at that epoch."""
    if not result["val_acc"]:
        return {"best_val_acc": None, "best_epoch": None, "test_acc_at_best_val": None, "final_test_acc": None}
    best = max(range(len(result["val_acc"])), key=lambda i: (result["val_acc"][i], -i))
    return {"best_val_acc": result["val_acc"][best], "best_epoch": best + 1,
            "test_acc_at_best_val": result["test_acc"][best], "final_test_acc": result["test_acc"][-1]}


def loader_workers(train, device, dist_ctx=None):
    """The per-image path's worker processes: --workers, else default_workers for this rank."""
    local = dist_ctx.local_world_size if dist_ctx is not None else 1
    return train.workers if train.workers is not None else default_workers(device, local)


def loader_pool(train, device, dist_ctx=None):
    """The one pool of loader workers a run's per-image splits share (started at its first batch)."""
    return LoaderPool(device, loader_workers(train, device, dist_ctx))


def feed(dataset, train, device, training, dist_ctx=None, pool=None):
    """Batches of `dataset` for training (shuffled and augmented per epoch)
    or evaluation: app.batches, this rank's share under torchrun, on
    `pool`'s workers where the split takes the per-image path."""
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx is not None else (0, 1)
    pool = pool if pool is not None else loader_pool(train, device, dist_ctx)
    return batches(dataset, train.batch_size, device, training, pool.workers, train.per_image, rank, world, pool)


def feeding(data, train, device, dist_ctx=None):
    """What summary.json records of how a run was fed: the data path of
    each split (device-resident or per-image with its workers) and the
    autocast dtype."""
    return {"data_path": {name: feed_path(getattr(data, name), train, device, dist_ctx)
                          for name in ("train", "val", "test")},
            "amp_dtype": amp_name(amp_dtype(train, device))}


def feed_path(dataset, train, device, dist_ctx=None):
    if device_resident(dataset, train.per_image):
        return DeviceBatches.path
    return loader_path(loader_workers(train, device, dist_ctx))


def train_state(model, data, train, device, *, state, checkpoint_file, best_file, extra, resume=None,
                on_epoch_start=None, save_weights=True, dist_ctx=None):
    """Train one IMP state (or one retraining run) and return its `result`.

    `extra` is merged into every checkpoint (it holds `init_weight` and any
    script-specific keys; `on_epoch_start(epoch)` may update it, as
    rewind_lt does). `resume` is a checkpoint of this state to continue.
    Without `save_weights` checkpoints hold the results only (no weights,
    masks or optimizer). Under DDP (`dist_ctx`) only rank 0 writes, and
    every rank evaluates with rank 0's BatchNorm statistics.
    """
    writer = dist_ctx is None or dist_ctx.is_main
    trained = model if dist_ctx is None else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    dtype = amp_dtype(train, device)
    step = train_step(trained, optimizer, gradient_scaler(device, dtype), device, dtype)
    result, best_sa, start = empty_result(), 0.0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        result = resume["result"]
        best_sa, start = resume["best_sa"], resume["epoch"]
    pool = loader_pool(train, device, dist_ctx)  # one set of loader workers, persisting across the epochs
    train_batches = feed(data.train, train, device, True, dist_ctx, pool)
    val_batches = feed(data.val, train, device, False, dist_ctx, pool)
    test_batches = val_batches if data.test is data.val else feed(data.test, train, device, False, dist_ctx, pool)
    for epoch in range(start, train.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        seed = epoch_seed(train.seed, state, epoch)
        seed_everything(seed)
        tic = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_batches.set_epoch(seed)
        loss, train_acc = train_one_epoch(trained, train_batches, step, device,
                                          desc=f"state {state} epoch {epoch + 1}/{train.epochs}",
                                          print_freq=train.print_freq, dist_ctx=dist_ctx,
                                          set_lr=warmup_per_iteration(optimizer, train, epoch, len(train_batches)))
        scheduler.step()
        if dist_ctx is not None:
            dist_ctx.broadcast_buffers(model)  # rank 0's BatchNorm statistics: what its checkpoint holds
        val_acc = evaluate(model, val_batches, device, dtype, dist_ctx)
        # a set that is both validation and test is evaluated once an epoch
        test_acc = val_acc if test_batches is val_batches else evaluate(model, test_batches, device, dtype, dist_ctx)
        seconds = time.perf_counter() - tic
        for key, value in zip(("train_loss", "train_acc", "val_acc", "test_acc", "lr", "seconds"),
                              (loss, train_acc, val_acc, test_acc, lr, seconds)):
            result[key].append(value)
        is_best = val_acc > best_sa
        best_sa = max(best_sa, val_acc)
        print(f"state {state} epoch {epoch + 1:>3}/{train.epochs} | loss {loss:.4f} | train {train_acc:6.2f}% | "
              f"val {val_acc:6.2f}% | test {test_acc:6.2f}% | lr {lr:.4g} | {seconds:.1f}s", flush=True)
        if writer:
            checkpoint = {"state": state, "result": result, "epoch": epoch + 1, "best_sa": best_sa}
            if save_weights:
                checkpoint.update(state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                                  scheduler=scheduler.state_dict(), **extra)
            # The best file first: a run stopped between the two writes (killed, disk full) resumes from the
            # previous epoch's checkpoint and writes both again, so the best file never lags the latest.
            if is_best:
                save_atomic(checkpoint, best_file)
            save_atomic(checkpoint, checkpoint_file)
    return result
