"""User-facing errors: one clear line and a non-zero exit, never a traceback.

Library code raises `UserError` for bad input (paths, flags, files); the
entry scripts run `main` through `run_cli`, which prints it as
`<script>: error: <message>` and exits with status 2.
"""
import os
import sys


class UserError(Exception):
    """Bad input the user can fix; the message is the whole explanation."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def run_cli(main, parser, argv=None):
    args = parser.parse_args(argv)
    prog = os.path.basename(sys.argv[0]) or parser.prog
    try:
        main(args)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; checkpoints written so far are complete", file=sys.stderr)
        sys.exit(130)
