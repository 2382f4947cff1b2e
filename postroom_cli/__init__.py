"""The `postroom` command, on top of every process."""
