"""User-facing errors: one clear line and a non-zero exit, never a traceback.

Library code raises `InvalidInput` (a ValueError) for input its caller can
fix: a value, a file, a combination of settings; `TrainingDiverged` when the
loss stops being finite. The entry scripts run `main` through `run_cli`,
which prints either as `<script>: error: <message>` and exits with status 2;
any other exception is a bug and keeps its traceback.
"""
import os
import sys


class InvalidInput(ValueError):
    """Input the caller can fix; the message is the whole explanation."""

    def __init__(self, message=""):
        # Raised in a DataLoader worker, it is re-made in the main process from "Caught <type> in DataLoader
        # worker ... Original Traceback ...", ending "<module>.<type>: <message>": keep that message, one line.
        text = str(message)
        if "Original Traceback" in text:
            text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(text)


class TrainingDiverged(InvalidInput):
    """The loss became NaN or infinite."""


class StorageFull(InvalidInput):
    """A file could not be written: the disk or quota is full, the device
    failed or went read-only. `hint` says how to continue once that is fixed
    (run_cli adds the script's own --resume command when it is None)."""

    def __init__(self, message="", hint=None):
        super().__init__(message)
        self.hint = hint


def resume_command(argv=None):
    """The command line this process was started with, plus --resume."""
    import shlex
    argv = list(sys.argv if argv is None else argv)
    return shlex.join(["python", *argv, *([] if "--resume" in argv else ["--resume"])])


def run_cli(main, parser, argv=None):
    args = parser.parse_args(argv)
    prog = os.path.basename(sys.argv[0]) or parser.prog
    try:
        main(args)
    except StorageFull as err:
        print(f"{prog}: error: {err}; files written before it are intact. Free space, then "
              f"{err.hint or 'continue with: ' + resume_command()}", file=sys.stderr)
        sys.exit(2)
    except InvalidInput as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; checkpoints written so far are complete", file=sys.stderr)
        sys.exit(130)
