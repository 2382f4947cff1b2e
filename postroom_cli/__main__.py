"""`python -m postroom_cli`: the `postroom` command."""

from postroom_cli.main import main

if __name__ == "__main__":
    main()
