import uuid

from outbox_relay.outbox import shard_of


def test_shard_is_stable_and_in_range() -> None:
    ids = [str(uuid.uuid4()) for _ in range(2000)]
    shards = [shard_of(i, 8) for i in ids]
    assert all(0 <= s < 8 for s in shards)
    assert shards == [shard_of(i, 8) for i in ids]
    # Every shard gets work: a relay owning one shard is not idle by construction.
    assert set(shards) == set(range(8))


def test_shard_does_not_depend_on_the_process_hash_seed() -> None:
    # CRC-32 of the id, so every process and release agrees on where a user's events go.
    assert shard_of("5f0c0b0e-0000-4000-8000-000000000000", 8) == shard_of(
        "5f0c0b0e-0000-4000-8000-000000000000", 8
    )
    assert shard_of("a", 1024) == 0xE8B7BE43 % 1024
