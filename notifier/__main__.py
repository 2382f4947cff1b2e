"""`python -m notifier`: the same as `postroom notifier`."""

from postroom.cli import main

main(["notifier"])
