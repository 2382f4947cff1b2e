"""`python -m sandbox`: run the Postmark sandbox and its dev inbox."""

from sandbox.app import main

if __name__ == "__main__":
    main()
