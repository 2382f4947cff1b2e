"""`python -m api`: the same as `postroom api`."""

from postroom.cli import main

main(["api"])
