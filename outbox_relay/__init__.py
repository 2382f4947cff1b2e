"""Moves committed outbox rows to Kafka. The writer half lives in `outbox`."""
