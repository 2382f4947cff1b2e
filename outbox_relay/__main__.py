"""`python -m outbox_relay`: the same as `postroom relay`."""

from postroom.cli import main

main(["relay"])
