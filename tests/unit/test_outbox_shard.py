"""A user's events go to one relay shard, the same in every process and every release: the
shard is CRC-32 of the user id, never Python's `hash`, which changes with PYTHONHASHSEED."""

import json
import os
import subprocess
import sys
import uuid
from collections import Counter

from postroom.outbox import shard_of

# Fixed ids, so what these tests see is the same on every run.
IDS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"postroom-user-{n}")) for n in range(2000)]

# Run in another interpreter: the shards of the ids on stdin, and what Python's own hash
# would have made of them, as a check that the hash seed really differs.
_OTHER_PROCESS = """
import json, sys
from postroom.outbox import shard_of
ids = json.load(sys.stdin)
print(json.dumps({"shards": [shard_of(i, 8) for i in ids], "hashed": [hash(i) % 8 for i in ids]}))
"""


def shards_in_a_process_with_hash_seed(seed: str) -> dict[str, list[int]]:
    answer = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS],
        input=json.dumps(IDS),
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, list[int]] = json.loads(answer.stdout)
    return result


def test_the_shard_is_crc32_of_the_id() -> None:
    # The CRC-32 check value (of "123456789") and the CRC-32 of "a", from the standard.
    assert shard_of("123456789", 2**32) == 0xCBF43926
    assert shard_of("a", 1024) == 0xE8B7BE43 % 1024


def test_processes_with_different_hash_seeds_agree_on_every_shard() -> None:
    here = [shard_of(i, 8) for i in IDS]
    one, other = shards_in_a_process_with_hash_seed("1"), shards_in_a_process_with_hash_seed("2")
    assert one["hashed"] != other["hashed"]  # the seeds matter to Python's own hash
    assert one["shards"] == here
    assert other["shards"] == here


def test_users_spread_evenly_over_the_shards() -> None:
    # Every shard gets work (a relay owning one shard is not idle by construction), and no
    # shard gets much more than its share: 250 of 2000 users each, within a fifth.
    counts = Counter(shard_of(i, 8) for i in IDS)
    assert set(counts) == set(range(8))
    assert all(200 <= count <= 300 for count in counts.values()), counts
