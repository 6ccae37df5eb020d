"""Dataset files are data: a CIFAR batch that would run code is refused
(its payload never runs), bad files fail in one line before training with
nothing in --save_dir touched, the real files' Python 2 pickles load, and
--download fetches an md5-checked archive (here from a server on 127.0.0.1)."""
import contextlib
import dataclasses
import functools
import hashlib
import http.server
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from app import cifar
from app.datasets import load_dataset
from conftest import load_script, run_script
from test_datasets import _write_images, make_fake_cifar10
from utils.errors import InvalidInput, run_cli

main_imp = load_script("main_imp.py")


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_code_carrying_batch_is_refused_and_its_payload_never_runs(tmp_path):
    make_fake_cifar10(tmp_path / "data")
    marker = tmp_path / "marker"
    with open(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _RunsCommand(f"touch {marker}"), "labels": [0]}, f)
    runs = [("main_imp.py", ["--epochs", "1", "--pruning_times", "1"]),
            ("main_eval_fillback.py", ["--epochs", "1", "--mask_dir", str(tmp_path / "ticket.pth.tar"),
                                         "--prune-type", "trained"])]
    for script, argv in runs:
        proc = run_script(script, "--dataset", "cifar10", "--data", tmp_path / "data", "--save_dir",
                          tmp_path / script, *argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "data_batch_1' asks to run 'posix.system' while loading" in lines[0] and "refused" in lines[0]
        assert not marker.exists()
        assert not (tmp_path / script).exists()  # refused before the run folder was made


def _good_batch(n=20, classes=10, key="labels"):
    rng = np.random.default_rng(n)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, classes, n).tolist()}


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _truncated(path):
    _dump(path, _good_batch())
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


BAD_FILES = {
    "not a pickle": ("data_batch_2", lambda p: open(p, "wb").write(b"GIF89a, not a pickle\n" * 200),
                     "is not a python pickle"),  # fixed bytes: random ones can read as a truncated pickle
    "truncated": ("data_batch_3", _truncated, "is truncated"),
    "float data": ("data_batch_1", lambda p: _dump(p, {**_good_batch(), "data": np.zeros((20, 3072), np.float32)}),
                   "'data' must be uint8 of shape (n, 3072), found float32 of shape (20, 3072)"),
    "wrong shape": ("test_batch", lambda p: _dump(p, {**_good_batch(), "data": np.zeros((20, 1024), np.uint8)}),
                    "'data' must be uint8 of shape (n, 3072), found uint8 of shape (20, 1024)"),
    "labels short": ("data_batch_4", lambda p: _dump(p, {**_good_batch(), "labels": [1, 2, 3]}),
                     "'labels' must be 20 integer labels, one per image; found 3"),
    "label outside": ("data_batch_5", lambda p: _dump(p, {**_good_batch(), "labels": [10] * 20}),
                      "label 10 is outside the 10 classes (0..9)"),
    "not a batch": ("data_batch_1", lambda p: _dump(p, [1, 2, 3]), "is not a CIFAR batch: expected a dict"),
    "missing meta": ("batches.meta", os.unlink, "lacks cifar-10-batches-py/batches.meta: expected "),
    "meta of other classes": ("batches.meta", lambda p: _dump(p, {"label_names": ["a", "b"]}),
                              "must hold 'label_names': a list of 10 class names"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_is_one_line_and_exit_2_before_training_with_the_run_folder_untouched(case, tmp_path, cli_error):
    name, damage, expected = BAD_FILES[case]
    make_fake_cifar10(tmp_path / "data")
    path = tmp_path / "data" / "cifar-10-batches-py" / name
    damage(path)
    save = tmp_path / "run"  # an earlier run the user resumes after changing its data
    save.mkdir()
    checkpoint = {k: 0 for k in ("state", "epoch", "optimizer", "scheduler", "result", "best_sa")}
    torch.save({**checkpoint, "state_dict": {}, "init_weight": {}}, save / "0checkpoint.pth.tar")
    (save / "summary.json").write_text('{"states": []}')
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in save.iterdir()}
    line = cli_error(main_imp, ["--dataset", "cifar10", "--data", str(tmp_path / "data"), "--save_dir", str(save),
                                "--resume", "--epochs", "1"])
    assert str(path if case != "missing meta" else path.parent.parent) in line and expected in line, line
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in save.iterdir()} == before


def test_an_unreadable_image_names_its_path_also_from_a_loader_worker(tmp_path, cli_error):
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            _write_images(tmp_path / split / wnid, n, 40)
    broken = tmp_path / "train" / "n01443537" / "img1.JPEG"
    broken.write_bytes(b"not a jpeg")
    for workers in ("0", "1"):
        line = cli_error(main_imp, ["--dataset", "imagenet", "--data", str(tmp_path), "--epochs", "1", "--batch_size",
                                    "6", "--workers", workers, "--pruning_times", "1",
                                    "--save_dir", str(tmp_path / f"run{workers}")])
        assert line.endswith(f"error: cannot read image '{broken}': not an image file PIL recognises"), line


# ---- the real files' format: Python 2 pickles -------------------------------------------------------------------

def _py2_str(text):
    """A Python 2 `str` as cPickle wrote it (SHORT_BINSTRING / BINSTRING): bytes that load as str under latin-1."""
    raw = text.encode("latin1") if isinstance(text, str) else text
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + len(raw).to_bytes(4, "little")) + raw


def _py2_int(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + value.to_bytes(2, "little")
    return b"J" + value.to_bytes(4, "little", signed=True)


def _py2_value(value):
    if isinstance(value, (str, bytes)):
        return _py2_str(value)
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, list):
        return b"](" + b"".join(map(_py2_value, value)) + b"e"
    # A uint8 matrix as numpy under Python 2 pickled it: _reconstruct(ndarray, (0,), 'b') then its state
    # (version 1, shape, dtype, Fortran order False, the raw bytes as a str).
    dtype = (b"cnumpy\ndtype\n" + _py2_str("u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str("|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str("b")
            + b"\x87R(" + _py2_int(1) + b"".join(map(_py2_int, value.shape)) + b"\x86" + dtype + b"\x89"
            + _py2_str(value.tobytes()) + b"tb")


def _py2_pickle(entry):
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _py2_value(v) for k, v in entry.items()) + b"u."


def test_batches_written_like_the_real_files_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate(cifar.CIFAR10.files[:-1]):
        rng = np.random.default_rng(i)
        batches[name] = {"batch_label": f"training batch {i + 1} of 5", "labels": rng.integers(0, 10, 7).tolist(),
                         "data": rng.integers(0, 256, (7, 3072), dtype=np.uint8),
                         "filenames": [f"img_{i}_{j}.png" for j in range(7)]}
        (folder / name).write_bytes(_py2_pickle(batches[name]))
    (folder / "batches.meta").write_bytes(_py2_pickle({"label_names": [f"class{i}" for i in range(10)],
                                                      "num_cases_per_batch": 10000, "num_vis": 3072}))
    entry = cifar.read_pickle(folder / "data_batch_1")
    assert sorted(entry) == ["batch_label", "data", "filenames", "labels"] and entry["filenames"][0] == "img_0_0.png"
    data = load_dataset("cifar10", str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (32, 3, 7)
    test = batches["test_batch"]
    for i in (0, 6):
        image, label = data.test[i]
        assert label == test["labels"][i]
        assert torch.equal(image, torch.tensor(test["data"][i]).reshape(3, 32, 32).float() / 255)
    assert [data.train[i][1] for i in range(7)] == batches["data_batch_1"]["labels"]


def test_an_allowed_global_cannot_be_turned_into_a_codec_lookup(tmp_path):
    (tmp_path / "f").write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x03\x00\x00\x00rot\x86R.")
    with pytest.raises(InvalidInput, match="asks to run '_codecs.encode' with encoding 'rot'"):
        cifar.read_pickle(tmp_path / "f")


# ---- --download --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _serve(folder):
    """An HTTP server on 127.0.0.1 serving `folder`; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda request, address: None  # a client closing early is no test failure
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_archive(tmp_path):
    """(folder holding cifar-10-python.tar.gz made of fake batches, its md5)."""
    make_fake_cifar10(tmp_path / "src")
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / cifar.CIFAR10.archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return served, hashlib.md5((served / cifar.CIFAR10.archive).read_bytes()).hexdigest()


def test_download_fills_data_and_trains_one_epoch(local_archive, tmp_path, monkeypatch, capsys):
    served, md5 = local_archive
    data = tmp_path / "data"
    with _serve(served) as url:
        monkeypatch.setitem(cifar.RELEASES, "cifar10", dataclasses.replace(
            cifar.CIFAR10, url=f"{url}/{cifar.CIFAR10.archive}", md5=md5))
        args = main_imp.get_args_parser().parse_args([
            "--dataset", "cifar10", "--data", str(data), "--download", "--epochs", "1", "--pruning_times", "1",
            "--workers", "0", "--save_dir", str(tmp_path / "run")])
        result = main_imp.main(args)
    assert "--download: fetching" in capsys.readouterr().out
    assert sorted(os.listdir(data / "cifar-10-batches-py")) == sorted(cifar.CIFAR10.files)
    assert len(result.states) == 1 and result.states[0]["epochs"]["test_acc"]
    # present files are not fetched again (the server is gone)
    assert len(load_dataset("cifar10", str(data), download=True).test) == 20


def _download_error(argv, capsys):
    """The error line of a --download run; beside it stderr holds only torchvision's download progress bar."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main_imp.main, main_imp.get_args_parser(), argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and "Traceback" not in "\n".join(lines)
    assert all("B/s]" in line for line in lines[:-1]), lines
    return lines[-1]


def test_download_refuses_a_wrong_md5_and_says_so_offline(local_archive, tmp_path, monkeypatch, capsys, cli_error):
    served, _ = local_archive
    data = tmp_path / "data"
    argv = ["--dataset", "cifar10", "--data", str(data), "--download", "--epochs", "1", "--save_dir",
            str(tmp_path / "run")]
    with _serve(served) as url:
        monkeypatch.setitem(cifar.RELEASES, "cifar10", dataclasses.replace(
            cifar.CIFAR10, url=f"{url}/{cifar.CIFAR10.archive}"))  # the official md5, another file
        line = _download_error(argv, capsys)
    assert f"did not match its md5 {cifar.CIFAR10.md5}: refused and removed" in line
    assert os.listdir(data) == []
    line = cli_error(main_imp, argv)  # the server is gone: nothing listens there now
    assert "--download: cannot fetch http://127.0.0.1:" in line and "without internet access, put the python " \
        f"version of cifar10 at {data / 'cifar-10-batches-py'}/" in line
    assert "cannot be downloaded here" in cli_error(main_imp, ["--dataset", "imagenet", "--download", "--data",
                                                               str(data), "--save_dir", str(tmp_path / "r2")])
