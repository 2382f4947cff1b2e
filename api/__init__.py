"""The REST API: every route that changes a user commits the user row and its event together."""
