"""address keys: one address, one identity (invariant 10)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Every table that compares addresses gets the address key of `postroom.addresses`, computed
here in Python (SQL's lower() is what this replaces): users' `email_key` (unique, instead of
lower(email)), notifications' `recipient_key`, bounces' `email_key`; the suppression list and
its lifts hold keys in their `email` column. Rows are read and keyed a batch at a time.

Existing rows may collide under the new key (two spellings lower() told apart, e.g.
`Émile@x` and `émile@x` on a C-locale database). Nothing is merged silently:
- two users with one key stop the migration (MigrationRefused), one line per key with the
  users' ids, never their addresses; docs/operations.md says what to do;
- suppressions of one key become one, kept by the suppression rules (a spam complaint wins,
  else the newest), and lifts of one key keep the newest; each merge is printed.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from migrations import MigrationRefused
from postroom.addresses import address_key

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5000

# (table, id column, its array type, the address column, the new key column)
_KEYED = (
    ("users", "id", "uuid[]", "email", "email_key"),
    ("notifications", "id", "uuid[]", "recipient", "recipient_key"),
    ("bounces", "id", "bigint[]", "email", "email_key"),
)
# Identifiers from the constants above only; values are always bound.
_PAGE = "SELECT {id}, {address} FROM {table} WHERE {id} > :after ORDER BY {id} LIMIT :n"
_FIRST_PAGE = "SELECT {id}, {address} FROM {table} ORDER BY {id} LIMIT :n"
_SET_KEYS = """
UPDATE {table} AS t SET {key} = v.key
FROM unnest(CAST(:ids AS {ids}), CAST(:keys AS text[])) AS v(id, key)
WHERE t.{id} = v.id
"""

_USERS_SHARING_A_KEY = sa.text(
    """
    SELECT array_agg(id::text ORDER BY created_at, id) AS ids
    FROM users GROUP BY email_key HAVING count(*) > 1
    ORDER BY min(created_at)
    """
)


# Going back: the old unique index on lower(email) takes users the keys tell apart but the
# database's lower() does not (on a UTF-8 locale, `İ` and `I` both lower to `i`).
_USERS_SHARING_LOWER = sa.text(
    """
    SELECT array_agg(id::text ORDER BY created_at, id) AS ids
    FROM users GROUP BY lower(email) HAVING count(*) > 1
    ORDER BY min(created_at)
    """
)


def _report(line: str) -> None:
    print(f"migration 0008: {line}", flush=True)


def _backfill(bind: sa.Connection, table: str, id_: str, ids: str, address: str, key: str) -> None:
    names = {"table": table, "id": id_, "address": address, "key": key, "ids": ids}
    after: Any = None
    while True:
        if after is None:
            rows = bind.execute(sa.text(_FIRST_PAGE.format(**names)), {"n": BATCH}).all()
        else:
            page = sa.text(_PAGE.format(**names))
            rows = bind.execute(page, {"after": after, "n": BATCH}).all()
        if not rows:
            return
        bind.execute(
            sa.text(_SET_KEYS.format(**names)),
            {"ids": [row[0] for row in rows], "keys": [address_key(row[1]) for row in rows]},
        )
        after = rows[-1][0]


def _refuse_users_sharing_a_key(bind: sa.Connection) -> None:
    shared = [row.ids for row in bind.execute(_USERS_SHARING_A_KEY)]
    if not shared:
        return
    lines = [f"users {', '.join(ids)} share one address" for ids in shared]
    raise MigrationRefused(
        "\n".join(
            [
                f"migration 0008 stopped: {len(shared)} addresses belong to more than one user "
                "(they differ only in letter case or accents; one user per address from now "
                "on). Nothing was changed.",
                *lines,
                "Keep one user of each line: delete the others (DELETE /v1/users/{id}) or give "
                "them another address (PATCH /v1/users/{id}), then run `postroom migrate` again "
                "(docs/operations.md, Upgrades).",
            ]
        )
    )


def _strongest(row: Any) -> tuple[Any, ...]:
    """Which suppression of one key the rules keep: a spam complaint, else the newest fact."""
    return (row.reason == "SpamComplaint", row.changed_at or row.created_at, row.created_at)


def _suppression(row: Any) -> str:
    when = (row.changed_at or row.created_at).isoformat(timespec="seconds")
    return f"{row.reason} ({row.origin}, {when})"


def _lift(row: Any) -> str:
    return f"a lift ({row.changed_at.isoformat(timespec='seconds')})"


# (table, its columns, which row of one key is kept, how a row is reported)
_LISTS = (
    ("suppressions", "email, reason, origin, created_at, changed_at", _strongest, _suppression),
    ("suppression_lifts", "email, changed_at", lambda row: row.changed_at, _lift),
)
_LIST_PAGE = "SELECT {columns} FROM {table} WHERE email > :after ORDER BY email LIMIT :n"
_LIST_HOLDING = "SELECT {columns} FROM {table} WHERE email = ANY(CAST(:keys AS text[]))"
_LIST_DROP = "DELETE FROM {table} WHERE email = ANY(CAST(:emails AS text[]))"
_LIST_RENAME = "UPDATE {table} SET email = :key WHERE email = :email"


def _to_be_keyed(bind: sa.Connection, table: str, columns: str) -> dict[str, list[Any]]:
    """The rows of a list whose address is not its key yet, with any row already holding
    that key, by key. Rows already keyed alone are read a page at a time, never held."""
    names = {"table": table, "columns": columns}
    changing: dict[str, list[Any]] = {}
    after = ""
    while rows := bind.execute(
        sa.text(_LIST_PAGE.format(**names)), {"after": after, "n": BATCH}
    ).all():
        for row in rows:
            key = address_key(row.email)
            if key != row.email:
                changing.setdefault(key, []).append(row)
        after = rows[-1].email
    if changing:
        holding = sa.text(_LIST_HOLDING.format(**names))
        for row in bind.execute(holding, {"keys": list(changing)}):
            changing[row.email].append(row)
    return changing


def _key_list(bind: sa.Connection, table: str, columns: str, keep: Any, describe: Any) -> None:
    """Rewrite a list's addresses as keys, one row per key: the one `keep` ranks highest
    (ties: the greater address, so a rerun keeps the same); each merge is reported."""
    groups = _to_be_keyed(bind, table, columns)
    kept = {key: max(rows, key=lambda r: (keep(r), r.email)) for key, rows in groups.items()}
    dropped = [row.email for key, rows in groups.items() for row in rows if row is not kept[key]]
    # Every row holding a key is in its group: once the others are gone, no rename collides.
    bind.execute(sa.text(_LIST_DROP.format(table=table)), {"emails": dropped})
    for key, rows in groups.items():
        winner = kept[key]
        if len(rows) > 1:
            others = ", ".join(describe(row) for row in rows if row is not winner)
            _report(
                f"{table}: {len(rows)} spellings of one address are one entry now; kept "
                f"{describe(winner)}, removed {others}"
            )
        if winner.email != key:
            bind.execute(
                sa.text(_LIST_RENAME.format(table=table)), {"key": key, "email": winner.email}
            )


def upgrade() -> None:
    bind = op.get_bind()
    for table, id_, ids, address, key in _KEYED:
        op.add_column(table, sa.Column(key, sa.Text(), nullable=True))
        _backfill(bind, table, id_, ids, address, key)
        if table == "users":
            _refuse_users_sharing_a_key(bind)
        op.alter_column(table, key, nullable=False)

    op.drop_index("uq_users_email_lower", table_name="users")
    op.create_index("uq_users_email_key", "users", ["email_key"], unique=True)
    op.drop_index("ix_notifications_recipient_lower", table_name="notifications")
    op.create_index("ix_notifications_recipient_key", "notifications", ["recipient_key"])
    op.drop_index("ix_bounces_email", table_name="bounces")
    op.create_index("ix_bounces_email_key", "bounces", ["email_key"])

    # A key need not be lower-case (Cherokee folds to its capitals): the check goes.
    # (Gone already if 0008 was undone once.)
    op.execute("ALTER TABLE suppressions DROP CONSTRAINT IF EXISTS ck_suppressions_email_lower")
    for table, columns, keep, describe in _LISTS:
        _key_list(bind, table, columns, keep, describe)


def _refuse_users_sharing_lower(bind: sa.Connection) -> None:
    shared = [row.ids for row in bind.execute(_USERS_SHARING_LOWER)]
    if not shared:
        return
    raise MigrationRefused(
        "\n".join(
            [
                f"undoing migration 0008 stopped: {len(shared)} addresses of different users "
                "are one address to the database's lower(), which the old release's unique "
                "index uses. Nothing was changed.",
                *(f"users {', '.join(ids)} share one address under lower()" for ids in shared),
                "Keep one user of each line (delete the others or give them another address), "
                "then undo it again (docs/operations.md, Upgrades).",
            ]
        )
    )


def downgrade() -> None:
    _refuse_users_sharing_lower(op.get_bind())
    op.drop_index("ix_bounces_email_key", table_name="bounces")
    op.create_index("ix_bounces_email", "bounces", ["email"])
    op.drop_index("ix_notifications_recipient_key", table_name="notifications")
    op.create_index(
        "ix_notifications_recipient_lower", "notifications", [sa.text("lower(recipient)")]
    )
    op.drop_index("uq_users_email_key", table_name="users")
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    for table, _, _, _, key in _KEYED:
        op.drop_column(table, key)
    # The suppression list keeps its keys (each one an address of its own to the old code),
    # without its old check: a key need not be what lower() gives.
