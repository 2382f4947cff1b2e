"""`python -m outbox_relay`: run the outbox relay."""

from outbox_relay.app import main

if __name__ == "__main__":
    main()
