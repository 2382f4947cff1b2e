"""`python -m api`: run the REST API."""

from api.app import main

if __name__ == "__main__":
    main()
