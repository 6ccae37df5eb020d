"""One run per run folder: `run_folder_lock(folder)` holds an exclusive OS
lock (flock) on `<folder>/.run.lock` for the run's lifetime.

The kernel drops the lock when the process ends, however it ends, so a
killed run never leaves a stale lock: the file may stay behind, but only
a held lock refuses. A second process that finds it held stops with one line
naming the holder (pid, host, start, command, which the holder writes into
the file), before it writes anything. Checking for an existing run cannot
catch two runs started at once; the lock can.
"""
import contextlib
import json
import os
import shlex
import socket
import sys
import time

from utils.checkpoint import lock_path
from utils.errors import InvalidInput

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None


def _holder(fd):
    """What the lock file says about its holder, as a phrase."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a process that is just starting"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}: {info.get('command')}"


def _acquire(path):
    """An open descriptor of `path` holding its exclusive lock; raises
    BlockingIOError (with the descriptor closed) when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            err.holder = _holder(fd)
            os.close(fd)
            raise
        # A holder that just ended unlinks the file it locked: hold the lock of the file now at `path`.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def run_folder_lock(folder, flag="--save_dir"):
    """Hold `folder` (created if missing) for this process until the block
    ends; another live holder makes it raise InvalidInput naming that holder."""
    if fcntl is None:
        yield
        return
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = _acquire(lock_path(folder))
    except BlockingIOError as err:
        raise InvalidInput(f"{flag} '{folder}' belongs to a run still going ({err.holder}); wait for it to end "
                           f"or choose another {flag}") from None
    except OSError as err:
        raise InvalidInput(f"{flag} '{folder}' is not writable: {err.strerror}") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": shlex.join([os.path.basename(sys.executable), *sys.argv])}
        with contextlib.suppress(OSError):  # the lock is held either way; the note only names the holder
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path(folder))  # still held, so no other process locks the file being removed
        os.close(fd)
        if created and not os.listdir(folder):  # a run refused before it wrote anything leaves no folder
            os.rmdir(folder)
