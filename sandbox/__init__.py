"""A Postmark-compatible HTTP server for development and tests, with a dev inbox."""
