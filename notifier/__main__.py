"""`python -m notifier`: run the notifier."""

from notifier.app import main

if __name__ == "__main__":
    main()
