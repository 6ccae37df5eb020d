"""The two input paths of app.batches and the sync-free training loop:
the device-resident augmentation draws torchvision's distribution and gives
its images for the same draws; every image is seen once an epoch on every
number of ranks; the per-image path does not depend on its workers; runs
are reproducible and resumable bit for bit; the host reads the device's
tallies once an epoch; the non-finite guard still stops before a
checkpoint; summary.json says how a run was fed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import app.training
from app.batches import DeviceBatches, LoaderBatches, crop_flip_draws, epoch_order
from app.config import TrainConfig
from app.datasets import load_dataset
from app.splits import DataSplits, InMemory, Tensors
from bench.training import synthetic_cifar
from conftest import ROOT, run_script
from utils.checkpoint import load_file
from utils.errors import TrainingDiverged

CPU = torch.device("cpu")


def test_crop_offsets_are_uniform_and_flips_a_coin_independently_per_image():
    """90,000 draws: each of the 9 offsets of each axis 1/9 of the time and
    flips 1/2 (chi-square at p = 0.001, a fixed seed: no flakiness), offsets
    and flips independent of each other and of the other axis."""
    n = 90_000
    offsets, flips = crop_flip_draws(n, 4, True, seed=12345)
    assert offsets.min() == 0 and offsets.max() == 8
    for axis in (0, 1):
        counts = torch.bincount(offsets[:, axis], minlength=9).double()
        assert ((counts - n / 9) ** 2 / (n / 9)).sum() < 26.12  # chi-square, 8 degrees of freedom
    heads = flips.sum().item()
    assert abs(heads - n / 2) < 3.3 * (n / 4) ** 0.5
    joint = torch.bincount(offsets[:, 0] * 18 + offsets[:, 1] * 2 + flips.long(), minlength=162).double()
    assert ((joint - n / 162) ** 2 / (n / 162)).sum() < 215.7  # chi-square, 161 degrees of freedom
    again, _ = crop_flip_draws(n, 4, True, seed=12345)
    other, _ = crop_flip_draws(n, 4, True, seed=12346)
    assert torch.equal(again, offsets) and not torch.equal(other, offsets)


def matches(array, image, offset, flip):
    """Whether `image` is ToTensor(hflip?(crop(pad(array, 4), top, left, 32, 32))): what
    RandomCrop(32, padding=4) and RandomHorizontalFlip make of it for these draws."""
    pil = Image.fromarray(array)
    cropped = TF.crop(TF.pad(pil, [4]), int(offset[0]), int(offset[1]), 32, 32)
    return torch.equal(TF.to_tensor(TF.hflip(cropped) if flip else cropped), image)


def test_a_device_batch_is_what_torchvision_makes_of_each_image_for_the_same_draws():
    """CIFAR's training split, one device-resident epoch: its i-th image is
    image order[i] of the split, exactly as torchvision's per-image
    operations transform it for that image's offsets and flip."""
    data = synthetic_cifar(70)
    batches = DeviceBatches(data.train.in_memory, 16, CPU, train=True)
    batches.set_epoch(3)
    order = torch.cat(epoch_order(len(data.train), 16, 3))
    offsets, flips = batches.draws()
    assert flips.any() and not flips.all() and offsets.unique().numel() == 9
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.float32 and images.shape == (70, 3, 32, 32)
    assert torch.equal(labels, torch.as_tensor(data.train.labels)[order])
    for k, i in enumerate(order.tolist()):
        assert matches(data.train.images[i], images[k], offsets[i], flips[i]), k


@pytest.mark.parametrize("n, batch, world", [(101, 16, 2), (100, 10, 2), (33, 16, 2), (7, 4, 3), (50, 8, 1),
                                             (17, 16, 2)])
def test_every_image_once_an_epoch_on_every_rank_count(n, batch, world):
    """Under torchrun each rank takes its share of every global batch, and
    the ranks together see each training image exactly once, none empty."""
    memory = InMemory(torch.zeros(n, 1, 2, 2), torch.arange(n))
    seen, per_rank = [], []
    for rank in range(world):
        feed = DeviceBatches(memory, batch, CPU, train=True, rank=rank, world=world)
        feed.set_epoch(11)
        labels = [y for _, y in feed]
        assert all(len(y) > 0 for y in labels) and len(labels) == len(feed)
        per_rank.append(len(labels))
        seen.extend(torch.cat(labels).tolist())
    assert sorted(seen) == list(range(n)) and len(set(per_rank)) == 1
    order = torch.cat(epoch_order(n, batch, 11))
    first = epoch_order(n, batch, 11, 0, world)[0]
    size = n if batch < n < batch + world else batch  # 17 images in 16s over 2 ranks: the last one joins the first batch
    assert torch.equal(first, order[:size][0::world])  # rank 0's share of the first global batch


def test_the_per_image_path_gives_the_same_batches_with_any_number_of_workers():
    """Each image's augmentation is seeded by (epoch, index): 0 or 2 workers,
    the same tensors; another epoch, other draws; the caller's RNG untouched."""
    data = synthetic_cifar(40)
    runs = {}
    for workers in (0, 2):
        feed = LoaderBatches(data.train, 16, CPU, True, workers)
        epochs = []
        for seed in (5, 6):
            feed.set_epoch(seed)
            torch.manual_seed(0)
            epochs.append([(x.clone(), y.clone()) for x, y in feed])
            assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(0)).item()
        runs[workers] = epochs
    for (a, b) in zip(runs[0], runs[2]):
        assert all(torch.equal(x0, x2) and torch.equal(y0, y2) for (x0, y0), (x2, y2) in zip(a, b))
    assert not torch.equal(runs[0][0][0][0], runs[0][1][0][0])


def test_a_split_smaller_than_the_ranks_is_refused():
    from app.batches import batches
    from utils.errors import InvalidInput
    one = Tensors(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long))
    assert len(batches(one, 4, CPU, False, 0, rank=0, world=1)) == 1
    with pytest.raises(InvalidInput, match="a split of 1 image.s. cannot be shared by 2 ranks"):
        batches(one, 4, CPU, False, 0, rank=0, world=2)


class _WorkerPid(torch.utils.data.Dataset):
    """Images that say which process made them: (pid as a 1-pixel image, label)."""

    def __init__(self, n, label):
        self.n, self.label = n, label

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return torch.full((1, 1, 1), float(os.getpid())), self.label


def test_a_runs_splits_take_turns_on_one_pool_of_workers():
    """Training, validation and test share one DataLoader and its 2 worker
    processes, which persist across the epochs: each split still gets
    exactly its own images, and what a split draws does not depend on the
    pool (the same batches as on a pool of its own)."""
    from app.batches import LoaderPool
    pool = LoaderPool(CPU, 2)
    splits = {"train": _WorkerPid(40, 0), "val": _WorkerPid(12, 1), "test": _WorkerPid(7, 2)}
    feeds = {name: LoaderBatches(ds, 16, CPU, name == "train", 2, pool=pool) for name, ds in splits.items()}
    pids = set()
    for seed in (5, 6):
        for name, feed in feeds.items():
            feed.set_epoch(seed)
            seen = [(x, y) for x, y in feed]
            assert sum(len(y) for _, y in seen) == len(splits[name])
            assert all(bool((y == splits[name].label).all()) for _, y in seen)
            pids |= {int(v) for x, _ in seen for v in x.flatten().tolist()}
    assert len(pids) == 2 and os.getpid() not in pids  # one pool, the same 2 workers throughout
    with pytest.raises(RuntimeError, match="before its workers start"):
        LoaderBatches(_WorkerPid(3, 3), 16, CPU, False, 2, pool=pool)
    data = synthetic_cifar(40)
    shared, alone = LoaderPool(CPU, 0), LoaderBatches(data.train, 16, CPU, True, 0)
    LoaderBatches(data.val, 16, CPU, False, 0, pool=shared)  # joins first: the training split is number 1
    together = LoaderBatches(data.train, 16, CPU, True, 0, pool=shared)
    for feed in (alone, together):
        feed.set_epoch(7)
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(alone, together))


def test_the_host_reads_an_epochs_tallies_once(monkeypatch):
    """No host sync per step: the device-side tallies are read at the end of
    the epoch, and every --print_freq steps when asked."""
    reads = []
    real = app.training.EpochTally.read
    monkeypatch.setattr(app.training.EpochTally, "read", lambda self, *a: reads.append(1) or real(self, *a))
    data = load_dataset("digits", "")
    from models import build_model
    model = build_model("res20s", 10, 1, data.spec.mean, data.spec.std)
    train = TrainConfig(batch_size=64, epochs=1, workers=0)
    optimizer = app.training.build_optimizer(model, train)
    step = app.training.train_step(model, optimizer, None, CPU, None)
    feed = DeviceBatches(data.train.in_memory, 64, CPU, train=True)
    app.training.train_one_epoch(model, feed, step, CPU)
    assert len(feed) == 20 and len(reads) == 1
    reads.clear()
    app.training.train_one_epoch(model, feed, step, CPU, print_freq=5)
    assert len(reads) == 4 + 1


def test_a_diverged_device_resident_run_stops_before_writing_a_checkpoint(tmp_path):
    """The guard reads at the end of the epoch: the non-finite loss of an
    early batch stops the run there, and the checkpoint of that epoch is
    never written."""
    data = load_dataset("digits", "")
    images, labels = data.train.tensors
    poisoned = DataSplits(Tensors(images.clone().index_fill_(0, torch.tensor([100]), float("nan")), labels),
                          data.val, data.test, data.spec)
    from models import build_model
    model = build_model("res20s", 10, 1, data.spec.mean, data.spec.std)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at batch \d+"):
        app.training.train_state(model, poisoned, TrainConfig(epochs=2, workers=0), CPU, state=0,
                                 checkpoint_file=str(tmp_path / "0checkpoint.pth.tar"),
                                 best_file=str(tmp_path / "best.pth.tar"), extra={"init_weight": {}})
    assert not list(tmp_path.iterdir())


def test_autocast_takes_bf16_where_the_gpu_has_it(monkeypatch):
    from app.training import autocast_dtype, gradient_scaler
    cuda = torch.device("cuda")
    # torch.cuda.is_bf16_supported() says yes on Volta/Turing too (emulated bf16): the capability decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))  # Hopper
    assert autocast_dtype(cuda) == torch.bfloat16 and gradient_scaler(cuda, torch.bfloat16) is None
    assert autocast_dtype(cuda, name="fp16") == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))  # Volta
    assert autocast_dtype(cuda) == torch.float16 and autocast_dtype(cuda, name="bf16") == torch.bfloat16
    assert autocast_dtype(cuda, amp=False) is None and autocast_dtype(CPU) is None


def test_warm_up_per_iteration_raises_the_rate_every_step():
    from app.training import build_optimizer, build_scheduler, warmup_per_iteration
    model = torch.nn.Linear(2, 2)
    train = TrainConfig(lr=0.1, warmup=2, warmup_unit="iteration", epochs=10)
    optimizer = build_optimizer(model, train)
    build_scheduler(optimizer, train)
    rates = []
    for epoch in range(3):
        set_lr = warmup_per_iteration(optimizer, train, epoch, steps=4)
        if epoch == 2:
            assert set_lr is None
            continue
        for i in range(4):
            set_lr(i)
            rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1 * k / 8 for k in range(1, 9)])
    assert warmup_per_iteration(optimizer, train.replace(warmup_unit="epoch"), 0, 4) is None


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    from test_datasets import make_fake_cifar10
    root = tmp_path_factory.mktemp("cifar")
    make_fake_cifar10(root, per_batch=24)
    return root


CIFAR_RUN = ["--dataset", "cifar10", "--arch", "res20s", "--epochs", "4", "--pruning_times", "1", "--batch_size", "16",
             "--seed", "5"]


def _final(save):
    ck = load_file(str(save / "0checkpoint.pth.tar"))
    return ck["state_dict"], ck["result"]


def test_device_resident_cifar_runs_are_bit_identical_and_resume_exactly(fake_cifar, tmp_path):
    """Two runs with one --seed end in the same bits; a run killed by SIGKILL
    as soon as its first epoch's checkpoint exists ends, after --resume, in
    those bits too; the summary says the data lived on the device."""
    runs = []
    for name in ("a", "b"):
        proc = run_script("main_imp.py", *CIFAR_RUN, "--data", fake_cifar, "--save_dir", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        runs.append(_final(tmp_path / name))
    (a_sd, a_result), (b_sd, b_result) = runs
    assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd) and a_result["val_acc"] == b_result["val_acc"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["training"] == {"data_path": {"train": "device-resident", "val": "device-resident",
                                                 "test": "device-resident"}, "amp_dtype": "off"}
    killed = tmp_path / "killed"
    cmd = [sys.executable, os.path.join(ROOT, "main_imp.py"), *CIFAR_RUN, "--data", str(fake_cifar), "--save_dir",
           str(killed)]
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while job.poll() is None and not (killed / "0checkpoint.pth.tar").exists():
        time.sleep(0.01)
    assert job.poll() is None, "the run ended before it could be killed"  # 3 epochs were still to run
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    proc = run_script("main_imp.py", *CIFAR_RUN, "--data", fake_cifar, "--save_dir", killed, "--resume")
    assert proc.returncode == 0, proc.stderr
    c_sd, c_result = _final(killed)
    assert all(torch.equal(a_sd[k], c_sd[k]) for k in a_sd) and c_result["val_acc"] == a_result["val_acc"]


def test_the_per_image_path_is_the_flag_away_and_recorded(fake_cifar, tmp_path):
    proc = run_script("main_imp.py", *CIFAR_RUN, "--data", fake_cifar, "--save_dir", tmp_path / "p", "--per_image",
                      "--epochs", "1", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["training"]["data_path"]["train"] == "per-image (DataLoader, 0 workers)"
    assert summary["args"]["per_image"] is True and summary["args"]["amp_dtype"] == "auto"


def test_training_speed_reports_epochs_of_both_paths_against_the_step(tmp_path, cli_error):
    """profile/training_speed.py: the step alone, then whole epochs through
    each path, dense and masked, each with its share of the ceiling; the
    JSON holds the printed figures."""
    from conftest import load_script
    speed = load_script("profile/training_speed.py")
    out = tmp_path / "speed.json"
    result = speed.main(speed.get_args_parser().parse_args(
        ["--arch", "res20s", "--dataset", "digits", "--batch_size", "256", "--repeats", "1", "--out", str(out)]))
    rows = result["rows"]
    assert {(r["variant"], r["path"]) for r in rows} == {
        (v, p) for v in ("dense", "masked") for p in ("step alone", "device-resident",
                                                      "per-image (DataLoader, 1 worker)")}
    for r in rows:
        ceiling = next(c for c in rows if c["variant"] == r["variant"] and c["path"] == "step alone")
        assert r["of_ceiling"] == pytest.approx(r["images_per_s"] / ceiling["images_per_s"])
        assert r["images_per_s_p10"] <= r["images_per_s"] <= r["images_per_s_p90"]
    assert set(result["loader_images_per_s"]) == {"per-image", "device-resident"}
    assert json.loads(out.read_text())["rows"] == rows
    assert "unknown --dataset 'mnist'" in cli_error(speed, ["--dataset", "mnist"])


def test_digits_trains_the_same_bits_through_either_path(tmp_path):
    """Without augmentation both paths feed the same images in the same
    order (one permutation an epoch), so the runs end in the same bits."""
    finals = []
    for name, extra in (("device", []), ("per_image", ["--per_image", "--workers", "2"])):
        main_imp_run = run_script("main_imp.py", "--epochs", "1", "--pruning_times", "1", "--save_dir", tmp_path / name,
                                  *extra)
        assert main_imp_run.returncode == 0, main_imp_run.stderr
        finals.append(load_file(str(tmp_path / name / "0checkpoint.pth.tar"))["state_dict"])  # after a whole epoch
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
