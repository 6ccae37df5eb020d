"""The one training loop and evaluation function every script uses.

`train_state` trains a (possibly masked) model for `train.epochs` epochs (a
TrainConfig) with
SGD + warm-up + step decay, evaluates validation and test accuracy after each
epoch, writes `<prefix>checkpoint.pth.tar` every epoch and
`<prefix>model_SA_best.pth.tar` whenever validation accuracy improves, and
resumes from a checkpoint of the same state. On CUDA it trains with AMP and
channels_last.
"""
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from utils.checkpoint import save_atomic
from app.datasets import make_loader
from app.distributed import shard
from utils.errors import TrainingDiverged
from utils.runtime import epoch_seed, seed_everything


def build_optimizer(model, train):
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def build_scheduler(optimizer, train):
    drops = train.milestones()

    def factor(epoch):
        if epoch < train.warmup:
            return (epoch + 1) / train.warmup  # linear warm-up, per epoch
        return 0.1 ** sum(epoch >= m for m in drops)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def empty_result():
    return {"train_loss": [], "train_acc": [], "val_acc": [], "test_acc": [], "lr": [], "seconds": []}


def autocast(device, amp):
    """fp16 autocast on CUDA when `amp` (the training loop's and bench.training's), off elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")


def _to_device(x, device):
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(model, loader, optimizer, device, *, amp=True, scaler=None, desc="train", print_freq=0,
                    dist_ctx=None):
    """One pass over `loader`; returns (mean loss, accuracy %), over all
    ranks under DDP. Raises TrainingDiverged on a non-finite loss, before the
    step that would spread it."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{desc}: loss became {loss.item()} at batch {step}; "
                                   "lower --lr or check the data (the last checkpoint is intact)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * targets.size(0)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += targets.size(0)
        if bar.disable and print_freq and (step + 1) % print_freq == 0:
            print(f"  {desc} [{step + 1}/{len(loader)}] loss {total_loss / seen:.4f} acc {100 * correct / seen:.2f}%")
        else:
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    if dist_ctx is not None:
        total_loss, correct, seen = dist_ctx.sum([total_loss, correct, seen])
    return total_loss / max(1, seen), 100.0 * correct / max(1, seen)


@torch.no_grad()
def evaluate(model, loader, device, amp=True, dist_ctx=None):
    """Top-1 accuracy (%) of `model` on `loader` in eval mode (under DDP,
    `loader` holds this rank's shard and the counts are summed)."""
    model.eval()
    correct, seen = 0, 0
    for images, targets in loader:
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += targets.size(0)
    if dist_ctx is not None:
        correct, seen = dist_ctx.sum([correct, seen])
    return 100.0 * correct / max(1, seen)


def best_summary(result):
    """Best validation accuracy, its epoch, and the test accuracy at that epoch."""
    if not result["val_acc"]:
        return {"best_val_acc": None, "best_epoch": None, "test_acc_at_best_val": None, "final_test_acc": None}
    best = max(range(len(result["val_acc"])), key=lambda i: (result["val_acc"][i], -i))
    return {"best_val_acc": result["val_acc"][best], "best_epoch": best + 1,
            "test_acc_at_best_val": result["test_acc"][best], "final_test_acc": result["test_acc"][-1]}


def eval_loader(dataset, train, device, dist_ctx=None):
    """Loader over `dataset` (this rank's shard under DDP)."""
    if dist_ctx is not None:
        dataset = shard(dataset, dist_ctx)
    return make_loader(dataset, train.batch_size, False, train.workers, pin_memory=device.type == "cuda")


def train_loader(dataset, train, device, seed, dist_ctx=None):
    """This epoch's shuffled training loader; under DDP each rank draws its
    share of every global batch of --batch_size."""
    if dist_ctx is None:
        return make_loader(dataset, train.batch_size, True, train.workers, seed=seed, pin_memory=device.type == "cuda")
    sampler = DistributedSampler(dataset, dist_ctx.world_size, dist_ctx.rank, shuffle=True, seed=seed)
    per_rank = math.ceil(train.batch_size / dist_ctx.world_size)
    return make_loader(dataset, per_rank, False, train.workers, seed=seed, sampler=sampler,
                       pin_memory=device.type == "cuda")


def train_state(model, data, train, device, *, state, checkpoint_file, best_file, extra, resume=None,
                on_epoch_start=None, save_weights=True, dist_ctx=None):
    """Train one IMP state (or one retraining run) and return its `result`.

    `extra` is merged into every checkpoint (it holds `init_weight` and any
    script-specific keys; `on_epoch_start(epoch)` may update it, as
    rewind_lt does). `resume` is a checkpoint of this state to continue.
    Without `save_weights` checkpoints hold the results only (no weights,
    masks or optimizer). Under DDP (`dist_ctx`) only rank 0 writes.
    """
    writer = dist_ctx is None or dist_ctx.is_main
    trained = model if dist_ctx is None else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    scaler = torch.amp.GradScaler("cuda", enabled=train.amp and device.type == "cuda")
    result, best_sa, start = empty_result(), 0.0, 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        result = resume["result"]
        best_sa, start = resume["best_sa"], resume["epoch"]
    amp = train.amp
    val_loader = eval_loader(data.val, train, device, dist_ctx)
    test_loader = eval_loader(data.test, train, device, dist_ctx)
    for epoch in range(start, train.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        seed = epoch_seed(train.seed, state, epoch)
        seed_everything(seed)
        tic = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loader = train_loader(data.train, train, device, seed, dist_ctx)
        loss, train_acc = train_one_epoch(trained, loader, optimizer, device, amp=amp, scaler=scaler,
                                          desc=f"state {state} epoch {epoch + 1}/{train.epochs}",
                                          print_freq=train.print_freq, dist_ctx=dist_ctx)
        scheduler.step()
        val_acc = evaluate(model, val_loader, device, amp, dist_ctx)
        test_acc = evaluate(model, test_loader, device, amp, dist_ctx)
        seconds = time.perf_counter() - tic
        for key, value in zip(("train_loss", "train_acc", "val_acc", "test_acc", "lr", "seconds"),
                              (loss, train_acc, val_acc, test_acc, lr, seconds)):
            result[key].append(value)
        is_best = val_acc > best_sa
        best_sa = max(best_sa, val_acc)
        print(f"state {state} epoch {epoch + 1:>3}/{train.epochs} | loss {loss:.4f} | train {train_acc:6.2f}% | "
              f"val {val_acc:6.2f}% | test {test_acc:6.2f}% | lr {lr:.4g} | {seconds:.1f}s", flush=True)
        if not math.isfinite(loss):
            raise TrainingDiverged(f"state {state} epoch {epoch + 1}: mean loss is {loss}")
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

