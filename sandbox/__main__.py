"""`python -m sandbox`: the same as `postroom sandbox`."""

from postroom.cli import main

main(["sandbox"])
