"""Shared test helpers: the repository root on sys.path, and a runner for
the entry scripts as a user runs them (a subprocess)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def run_script(script, *args, cwd=None, timeout=600):
    """Run `python <script> args...` from the repo root; returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_error(capsys):
    """Run an entry script's main in-process through run_cli and return the
    error text it printed; fails unless it exited non-zero without a traceback."""
    from utils.errors import run_cli

    def call(module, argv):
        with pytest.raises(SystemExit) as exc:
            run_cli(module.main, module.get_args_parser(), argv)
        err = capsys.readouterr().err
        assert exc.value.code not in (0, None), err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        return lines[0]

    return call
