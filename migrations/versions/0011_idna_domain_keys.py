"""address keys: the domain as DNS has it, every address read as the api reads it

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

0008 keyed a whole address by Unicode's caseless match. `postroom.addresses` now reads an
address as the api does first (`Name <address>` gives the address; an `xn--` domain, full-width
letters and an ideographic full stop are normalized) and keys the domain by IDNA's rule, under
which `straße.de` and `strasse.de` are two domains. Stored keys are recomputed:

- users, notifications and bounces: each row whose key moves gets its new one. Two users with
  one key stop the migration (MigrationRefused, their ids only). The api always stored the
  normalized form, so none is expected.
- the suppression list and its lifts hold keys, not addresses. An entry 0008 wrote may stand
  for addresses the new rule tells apart, and an entry written from a webhook's `xn--` form
  stands apart from the address the api stored. So each entry is carried to the new key of its
  own text and to the new key of every address stored in users, notifications or bounces whose
  0008 key it was: a suppression never covers fewer addresses than before. Entries landing on
  one key become one by the suppression rules (a spam complaint wins, else the newest fact;
  the newest lift). What moved is counted and printed, never an address.

Migrations are history: the 0008 rule is restated here as it was, not imported.
"""

import unicodedata
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from migrations import MigrationRefused
from postroom.addresses import address_key

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5000


def _key_0008(email: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", email.strip()).casefold())


# (table, id column, its array type, the address column, the key column)
_KEYED = (
    ("users", "id", "uuid[]", "email", "email_key"),
    ("notifications", "id", "uuid[]", "recipient", "recipient_key"),
    ("bounces", "id", "bigint[]", "email", "email_key"),
)
# Identifiers from the constants here only; values are always bound.
_FIRST_PAGE = """
SELECT {id} AS id, {address} AS address, {key} AS key FROM {table}
ORDER BY {id} LIMIT :n
"""
_PAGE = """
SELECT {id} AS id, {address} AS address, {key} AS key FROM {table}
WHERE {id} > :after ORDER BY {id} LIMIT :n
"""
_SET_KEYS = """
UPDATE {table} AS t SET {key} = v.key
FROM unnest(CAST(:ids AS {ids}), CAST(:keys AS text[])) AS v(id, key)
WHERE t.{id} = v.id
"""
_USERS_SHARING_A_KEY = sa.text(
    "SELECT array_agg(id::text ORDER BY created_at, id) AS ids "
    "FROM users GROUP BY email_key HAVING count(*) > 1 ORDER BY min(created_at)"
)


def _report(line: str) -> None:
    print(f"migration 0011: {line}", flush=True)


def _rekey(bind: sa.Connection, moved: dict[str, set[str]]) -> None:
    """New keys for the rows whose key moves; `moved` learns, for each 0008 key, the new keys
    of the addresses it stood for."""
    for table, id_, ids, address, key in _KEYED:
        names = {"table": table, "id": id_, "ids": ids, "address": address, "key": key}
        first, page = sa.text(_FIRST_PAGE.format(**names)), sa.text(_PAGE.format(**names))
        rows = bind.execute(first, {"n": BATCH}).all()
        changed = 0
        while rows:
            updates = []
            for row in rows:
                if row.key == "":  # erased
                    continue
                new = address_key(row.address)
                if (old := _key_0008(row.address)) != new:
                    moved.setdefault(old, set()).add(new)
                if new != row.key:
                    moved.setdefault(row.key, set()).add(new)
                    updates.append((row.id, new))
            if updates:
                bind.execute(
                    sa.text(_SET_KEYS.format(**names)),
                    {"ids": [i for i, _ in updates], "keys": [k for _, k in updates]},
                )
                changed += len(updates)
            rows = bind.execute(page, {"after": rows[-1].id, "n": BATCH}).all()
        if changed:
            _report(f"{table}: {changed} keys recomputed")


def _refuse_users_sharing_a_key(bind: sa.Connection) -> None:
    shared = [row.ids for row in bind.execute(_USERS_SHARING_A_KEY)]
    if not shared:
        return
    raise MigrationRefused(
        "\n".join(
            [
                f"migration 0011 stopped: {len(shared)} addresses belong to more than one user "
                "under the new domain rule. Nothing was changed.",
                *(f"users {', '.join(ids)} share one address" for ids in shared),
                "Keep one user of each line: delete the others (DELETE /v1/users/{id}) or give "
                "them another address (PATCH /v1/users/{id}), then run `postroom migrate` again "
                "(docs/operations.md, Upgrades).",
            ]
        )
    )


def _suppression_rank(row: Any) -> tuple[Any, ...]:
    return (row.reason == "SpamComplaint", row.changed_at or row.created_at, row.created_at)


_LIST_PAGE = "SELECT * FROM {table} WHERE email > :after ORDER BY email LIMIT :n"
_LIST_HOLDING = "SELECT * FROM {table} WHERE email = ANY(CAST(:keys AS text[]))"
_LIST_DROP = "DELETE FROM {table} WHERE email = ANY(CAST(:emails AS text[]))"

# (table, which entry of one key is kept)
_LISTS = (
    ("suppressions", _suppression_rank),
    ("suppression_lifts", lambda row: (row.changed_at,)),
)


def _carry_list(bind: sa.Connection, table: str, rank: Any, moved: dict[str, set[str]]) -> None:
    """Carry each entry of a list to every key it now stands for, one entry per key."""
    carried: list[tuple[Any, set[str]]] = []
    after = ""
    while rows := bind.execute(
        sa.text(_LIST_PAGE.format(table=table)),
        {"after": after, "n": BATCH},
    ).all():
        for row in rows:
            targets = {address_key(row.email)} | moved.get(row.email, set())
            if targets != {row.email}:
                carried.append((row, targets))
        after = rows[-1].email
    if not carried:
        return
    wanted = set().union(*(targets for _, targets in carried))
    holding = {
        row.email: row
        for row in bind.execute(
            sa.text(_LIST_HOLDING.format(table=table)),
            {"keys": sorted(wanted)},
        )
    }
    winners: dict[str, Any] = {}
    merged = 0
    for key in sorted(wanted):
        group = [row for row, targets in carried if key in targets]
        if key in holding and all(row.email != key for row in group):
            group.append(holding[key])
        merged += len(group) > 1
        winners[key] = max(group, key=lambda row: (rank(row), row.email))
    gone = {row.email for row, _ in carried} | set(holding)
    bind.execute(
        sa.text(_LIST_DROP.format(table=table)),
        {"emails": sorted(gone)},
    )
    for key, row in winners.items():
        values = {**row._mapping, "email": key}
        bind.execute(sa.insert(sa.table(table, *map(sa.column, values))).values(values))
    _report(
        f"{table}: {len(carried)} entries carried to {len(wanted)} keys "
        f"({merged} keys held by more than one entry, kept by the rules)"
    )


def upgrade() -> None:
    bind = op.get_bind()
    moved: dict[str, set[str]] = {}
    _rekey(bind, moved)
    _refuse_users_sharing_a_key(bind)
    for table, rank in _LISTS:
        _carry_list(bind, table, rank, moved)


def downgrade() -> None:
    # The keys stay as they are: 0008's rule would only merge domains again, and every
    # statement before 0011 compares stored keys the same way.
    pass
