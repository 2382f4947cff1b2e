"""`python -m postroom_cli`: the `postroom` command."""

import os
import signal

# As at the top of main.py, and sooner: a Ctrl-C while the command loads ends it quietly.
signal.signal(signal.SIGINT, lambda _signum, _frame: os._exit(130))  # see main.py

from postroom_cli.main import main  # noqa: E402

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
