"""One change to one job, made only while the worker still holds the job's lease.

The engine commits a handful of rows per step (the job, the step, an attempt, the
panel calls, a compensation, callbacks, wake-ups). On PostgreSQL they are written by
ONE statement: the job's UPDATE, fenced by ``lease_owner``, is a CTE every other
write depends on, so a worker that lost the job writes nothing at all, and a step
costs one round trip instead of one per row plus BEGIN and COMMIT. That statement is
the worker's hottest path, so it is rendered here and sent on the driver's
connection, without the ORM layer's per-statement work (several times the cost of
the round trip itself). On SQLite the same writes run one after another, through
SQLAlchemy, inside a transaction that the fence can roll back.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Float, Integer, Select, Table, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.jobs import UNFINISHED_JOB_STATUSES
from bridge.store import tables as t
from bridge.store.driver import driver_connection
from bridge.store.types import UTCDateTime


class LeaseLost(Exception):
    """Another worker owns the job now; this one must not send or write anything for it."""


@dataclass(frozen=True)
class NextNumber:
    """An inserted row's number: one more than the largest in its column among the rows of its
    table whose ``column`` is ``value`` (1 for the first), counted by the statement inserting it."""

    column: str
    value: Any


@dataclass
class _RowsUpdate:
    table: Table
    # column -> value, or a collection of values (IN)
    match: dict[str, Any]
    values: dict[str, Any]


@dataclass
class JobChange:
    """Writes that stand or fall with the job's own UPDATE (``job_values``)."""

    job_pk: int
    owner: str
    job_values: dict[str, Any]
    # Job columns to read back from the job's UPDATE (the row after the change).
    returning: tuple[str, ...] = ()
    _updates: list[_RowsUpdate] = field(default_factory=list)
    _rows: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)
    # Inserts whose new id the change returns, by the name it is returned as (index into _rows).
    _ids: dict[str, int] = field(default_factory=dict)
    _wake_next: tuple[str, datetime] | None = None
    # The job's compensation records are read by the change itself (see report_compensations).
    _reports_compensations: bool = False
    _settle_compensations: str | None = None
    # Run with the result once the change is committed (e.g. to learn a new row's id).
    _on_commit: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    def on_commit(self, then: Callable[[dict[str, Any]], None]) -> None:
        self._on_commit.append(then)

    def update(self, table: Table, match: dict[str, Any], values: dict[str, Any]) -> None:
        """Set ``values`` on the rows of ``table`` that ``match``. A later update of the same rows in
        this change is merged into the earlier one, as if they ran in turn: in one PostgreSQL
        statement two parts updating one row would not both take effect (say, a step's outcome
        and the start of its next attempt, when its retry is due at once)."""
        for earlier in self._updates:
            if earlier.table is table and earlier.match == match:
                earlier.values.update(values)
                return
        self._updates.append(_RowsUpdate(table, match, dict(values)))

    def set(self, **job_values: Any) -> None:
        """More values for the job's own row (a later part of a change merged into an earlier one)."""
        self.job_values.update(job_values)

    def read_back(self, *columns: str) -> None:
        self.returning = tuple(dict.fromkeys((*self.returning, *columns)))

    def insert(self, table: Table, row: dict[str, Any], *, id_as: str | None = None) -> None:
        """Insert ``row``; with ``id_as``, the change returns the new row's id under that name."""
        if id_as is not None:
            assert id_as not in self._ids, f"{id_as} is returned once"
            self._ids[id_as] = len(self._rows)
        self._rows.append((table, row))

    def wake_next_of_service(self, service_id: str, now: datetime) -> None:
        """Wake the next unfinished job of ``service_id`` after this one (it was waiting its turn)."""
        self._wake_next = (service_id, now)

    def report_compensations(self, *, settle: str | None = None) -> None:
        """Read the job's compensation records as this change leaves them, into its result
        (``compensations``) and into the ``data.compensations`` of every callback it writes; with
        ``settle``, the records still pending take that status.

        They are read locked, in the change's own transaction: an admin's resolution of one is
        either committed before and read, or waits for the change to commit. So a callback never
        reports a record as it was before a resolution that committed first, and settling never
        overrides one."""
        self._reports_compensations = True
        self._settle_compensations = settle or self._settle_compensations

    async def apply(self, engine: AsyncEngine) -> dict[str, Any]:
        """Commit the change; the ``returning`` columns and the new ids. Raises :class:`LeaseLost`."""
        # A record inserted by the change itself would not be read by it (one snapshot on PostgreSQL).
        assert not (self._reports_compensations and any(table is t.compensations for table, _ in self._rows))
        if engine.dialect.name == "postgresql":
            result = await self._apply_on_postgresql(engine)
        else:
            result = await self._apply_in_turn(engine)
        for then in self._on_commit:
            then(result)
        return result

    async def _apply_on_postgresql(self, engine: AsyncEngine) -> dict[str, Any]:
        sql, args = self.postgresql_statement()
        async with driver_connection(engine) as driver:
            # One statement is a transaction of its own (no BEGIN/COMMIT round trips).
            row = await driver.fetchrow(sql, *args)
        if row is None:
            raise LeaseLost()
        return dict(row)

    def postgresql_statement(self) -> tuple[str, list[Any]]:
        p = _Params()
        jobs = t.jobs.c
        sets = ", ".join(f'"{name}" = {p(jobs[name], value)}' for name, value in self.job_values.items())
        back = ", ".join(f'"{name}"' for name in ("id", *self.returning))
        ctes = [
            f"changed_job AS (UPDATE jobs SET {sets} WHERE id = {p(jobs.id, self.job_pk)} "
            f"AND lease_owner = {p(jobs.lease_owner, self.owner)} RETURNING {back})"
        ]
        fenced = "EXISTS (SELECT 1 FROM changed_job)"
        for n, change in enumerate(self._updates):
            cols = change.table.c
            sets = ", ".join(f'"{name}" = {p(cols[name], value)}' for name, value in change.values.items())
            where = " AND ".join(_match(p, cols[name], value) for name, value in change.match.items())
            ctes.append(f'update_{n} AS (UPDATE "{change.table.name}" SET {sets} WHERE {where} AND {fenced})')
        if self._reports_compensations:
            ctes.append(self._compensations_cte(p, fenced))
        for n, (table, row) in enumerate(self._rows):
            names = ", ".join(f'"{name}"' for name in row)
            values = ", ".join(self._inserted(p, table, name, value) for name, value in row.items())
            returning = " RETURNING id" if n in self._ids.values() else ""
            ctes.append(
                f'insert_{n} AS (INSERT INTO "{table.name}" ({names}) SELECT {values} WHERE {fenced}{returning})'
            )
        if self._wake_next is not None:
            service_id, now = self._wake_next
            ctes.append(
                "wake_next AS (INSERT INTO outbox (job_public_id, delay_s, created_at) "
                f"SELECT public_id, 0.0, {p(t.outbox.c.created_at, now)} FROM jobs "
                f"WHERE service_id = {p(jobs.service_id, service_id)} AND id > {p(jobs.id, self.job_pk)} "
                f"AND {_match(p, jobs.status, UNFINISHED_JOB_STATUSES)} AND {fenced} ORDER BY id LIMIT 1 "
                "RETURNING 1)"
            )
        extra = ""
        for name, n in self._ids.items():
            extra += f', (SELECT id FROM insert_{n}) AS "{name}"'
        if self._wake_next is not None:
            extra += ", (SELECT count(*) FROM wake_next) AS woke_next"
        if self._reports_compensations:
            extra += f", {_COMPENSATIONS_JSON} AS compensations"
        return f"WITH {', '.join(ctes)} SELECT changed_job.*{extra} FROM changed_job", p.values

    def _compensations_cte(self, p: _Params, fenced: str) -> str:
        # Locked as read: FOR SHARE, or the UPDATE settling them (on every record of the job, so
        # that each is read as the last commit left it, not as the statement's snapshot saw it).
        comps = t.compensations.c
        of_job = f"job_id = {p(comps.job_id, self.job_pk)} AND {fenced}"
        if self._settle_compensations is None:
            return f"compensations_now AS (SELECT {_COMPENSATION_FIELDS} FROM compensations WHERE {of_job} FOR SHARE)"
        settled = f"CASE WHEN status = 'pending' THEN {p(comps.status, self._settle_compensations)} ELSE status END"
        return (
            f"compensations_now AS (UPDATE compensations SET status = {settled} WHERE {of_job} "
            f"RETURNING {_COMPENSATION_FIELDS})"
        )

    def _inserted(self, p: _Params, table: Table, name: str, value: Any) -> str:
        """One value of a row the statement inserts."""
        if isinstance(value, NextNumber):
            of = _match(p, table.c[value.column], value.value)
            return f'(SELECT coalesce(max("{name}"), 0) + 1 FROM "{table.name}" WHERE {of})'
        if self._reports_compensations and table is t.callbacks and name == "body":
            return f"jsonb_set({p(table.c[name], value)}, '{{data,compensations}}', {_COMPENSATIONS_JSON})"
        return p(table.c[name], value)

    @property
    def writes_outbox(self) -> bool:
        """Whether the change certainly writes a wake-up (the next job of the service: see ``woke_next``)."""
        return any(table is t.outbox for table, _ in self._rows)

    @property
    def writes_callbacks(self) -> bool:
        return any(table is t.callbacks for table, _ in self._rows)

    async def _apply_in_turn(self, engine: AsyncEngine) -> dict[str, Any]:
        jobs = t.jobs.c
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    update(t.jobs)
                    .where(jobs.id == self.job_pk, jobs.lease_owner == self.owner)
                    .values(**self.job_values)
                    .returning(jobs.id, *(jobs[name] for name in self.returning))
                )
            ).one_or_none()
            if row is None:
                raise LeaseLost()
            result = dict(row._mapping)
            for change in self._updates:
                cols = change.table.c
                where = [
                    cols[name].in_(value) if _is_many(value) else cols[name] == value
                    for name, value in change.match.items()
                ]
                await conn.execute(update(change.table).where(*where).values(**change.values))
            if self._reports_compensations:
                result["compensations"] = await self._compensations_in_turn(conn)
            names = {n: name for name, n in self._ids.items()}
            for n, (table, given) in enumerate(self._rows):
                values = {k: _next_number(table, k, v) if isinstance(v, NextNumber) else v for k, v in given.items()}
                if self._reports_compensations and table is t.callbacks:
                    data = {**values["body"]["data"], "compensations": result["compensations"]}
                    values["body"] = {**values["body"], "data": data}
                if n in names:
                    adding = insert(table).values(**values).returning(table.c.id)
                    result[names[n]] = (await conn.execute(adding)).scalar_one()
                else:
                    await conn.execute(insert(table).values(**values))
            if self._wake_next is not None:
                service_id, now = self._wake_next
                woke = await conn.execute(
                    insert(t.outbox).from_select(WAKE_COLUMNS, next_of_service(service_id, self.job_pk, now))
                )
                result["woke_next"] = woke.rowcount
        return result

    async def _compensations_in_turn(self, conn: AsyncConnection) -> list[dict[str, Any]]:
        # SQLite: the transaction (BEGIN IMMEDIATE) already keeps every other writer out.
        comps = t.compensations.c
        if self._settle_compensations is not None:
            pending = update(t.compensations).where(comps.job_id == self.job_pk, comps.status == "pending")
            await conn.execute(pending.values(status=self._settle_compensations))
        fields = (comps.id, comps.step, comps.action, comps.status)
        rows = await conn.execute(select(*fields).where(comps.job_id == self.job_pk).order_by(comps.id))
        return [dict(r._mapping) for r in rows]


WAKE_COLUMNS = ["job_public_id", "delay_s", "created_at"]
# The job's compensation records as callbacks report them (see job_view.callback_body).
_COMPENSATION_FIELDS = "id, step, action, status"
_COMPENSATIONS_JSON = (
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'step', step, 'action', action, 'status', status) "
    "ORDER BY id), '[]'::jsonb) FROM compensations_now)"
)


def next_of_service(service_id: str, job_pk: int, now: datetime) -> Select[Any]:
    """The outbox row waking the next unfinished job of ``service_id`` after job ``job_pk``."""
    return (
        select(
            t.jobs.c.public_id,
            literal(0.0, type_=t.outbox.c.delay_s.type),
            literal(now, type_=t.outbox.c.created_at.type),
        )
        .where(t.jobs.c.service_id == service_id, t.jobs.c.id > job_pk, t.jobs.c.status.in_(UNFINISHED_JOB_STATUSES))
        .order_by(t.jobs.c.id)
        .limit(1)
    )


def _is_many(value: Any) -> bool:
    return isinstance(value, Collection) and not isinstance(value, str)


def _next_number(table: Table, name: str, number: NextNumber) -> Any:
    of = table.c[number.column] == number.value
    return select(func.coalesce(func.max(table.c[name]), 0) + 1).where(of).scalar_subquery()


def _match(p: _Params, column: Column[Any], value: Any) -> str:
    if _is_many(value):
        return f'"{column.name}" = ANY({p.many(column, value)})'
    return f'"{column.name}" = {p(column, value)}'


class _Params:
    """Positional parameters ($1, $2, ...) for the driver, each cast to its column's type."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, column: Column[Any], value: Any) -> str:
        self.values.append(_driver_value(column, value))
        return f"${len(self.values)}::{_pg_type(column)}"

    def many(self, column: Column[Any], values: Collection[Any]) -> str:
        self.values.append([_driver_value(column, value) for value in values])
        return f"${len(self.values)}::{_pg_type(column)}[]"


def _pg_type(column: Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return "timestamptz"
    if isinstance(kind, JSON):
        return "jsonb"
    if isinstance(kind, Boolean):
        return "boolean"
    if isinstance(kind, Integer):
        return "integer"
    if isinstance(kind, Float):
        return "float8"
    return "text"


def _driver_value(column: Column[Any], value: Any) -> Any:
    if isinstance(column.type, JSON):
        # The engine's connections encode jsonb from text; None is stored as JSON null, as SQLAlchemy does.
        return json.dumps(value)
    if isinstance(column.type, UTCDateTime) and value is not None and value.tzinfo is None:
        raise ValueError(f"naive datetime given to {column.name}")
    if isinstance(value, enum.Enum):
        return value.value
    return value
