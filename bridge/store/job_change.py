"""One change to one job, made only while the worker still holds the job's lease.

The engine commits a handful of rows per step (the job, the step, an attempt, the
panel calls, a compensation, callbacks, wake-ups). On PostgreSQL they are written by
ONE statement: the job's UPDATE, fenced by ``lease_owner``, is a CTE every other
write depends on, so a worker that lost the job writes nothing at all, and a step
costs one round trip instead of one per row plus BEGIN and COMMIT. On SQLite the same
writes run one after another inside a transaction that the fence can roll back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CTE, Table, exists, insert, literal, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Update

from bridge.store import tables as t


class LeaseLost(Exception):
    """Another worker owns the job now; this one must not send or write anything for it."""


@dataclass
class _InsertFrom:
    table: Table
    columns: list[str]
    rows: Select[Any]


@dataclass
class JobChange:
    """Writes that stand or fall with the job's own UPDATE (``job_values``)."""

    job_pk: int
    owner: str
    job_values: dict[str, Any]
    # Job columns to read back from the job's UPDATE (the row after the change).
    returning: tuple[str, ...] = ()
    _updates: list[Update] = field(default_factory=list)
    _rows: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)
    _selected: list[_InsertFrom] = field(default_factory=list)
    # The insert whose new id the change returns as ``new_id`` (index into _rows).
    _id_of: int | None = None

    def update(self, statement: Update) -> None:
        self._updates.append(statement)

    def insert(self, table: Table, row: dict[str, Any], *, return_id: bool = False) -> None:
        if return_id:
            assert self._id_of is None, "one new id per change"
            self._id_of = len(self._rows)
        self._rows.append((table, row))

    def insert_from(self, table: Table, columns: list[str], rows: Select[Any]) -> None:
        self._selected.append(_InsertFrom(table, columns, rows))

    async def apply(self, engine: AsyncEngine) -> dict[str, Any]:
        """Commit the change; the ``returning`` columns (and ``new_id``). Raises :class:`LeaseLost`."""
        if engine.dialect.name == "postgresql":
            return await self._apply_as_one_statement(engine)
        return await self._apply_in_turn(engine)

    def _job_update(self) -> Update:
        return (
            update(t.jobs)
            .where(t.jobs.c.id == self.job_pk, t.jobs.c.lease_owner == self.owner)
            .values(**self.job_values)
            .returning(t.jobs.c.id, *(t.jobs.c[name] for name in self.returning))
        )

    async def _apply_as_one_statement(self, engine: AsyncEngine) -> dict[str, Any]:
        job = self._job_update().cte("changed_job")
        fenced = exists(select(job.c.id))
        ctes: list[CTE] = []
        for n, statement in enumerate(self._updates):
            ctes.append(statement.where(fenced).cte(f"update_{n}"))
        new_id: CTE | None = None
        for n, (table, row) in enumerate(self._rows):
            values = select(*(literal(value, type_=table.c[name].type) for name, value in row.items())).where(fenced)
            adding = insert(table).from_select(list(row), values)
            if n == self._id_of:
                new_id = adding.returning(table.c.id).cte(f"insert_{n}")
                continue
            ctes.append(adding.cte(f"insert_{n}"))
        for n, selected in enumerate(self._selected):
            adding = insert(selected.table).from_select(selected.columns, selected.rows.where(fenced))
            ctes.append(adding.cte(f"insert_from_{n}"))
        columns = [job.c[name] for name in ("id", *self.returning)]
        if new_id is not None:
            columns.append(select(new_id.c.id).scalar_subquery().label("new_id"))
        async with engine.connect() as conn:
            # One statement runs in a transaction of its own; autocommit saves BEGIN and COMMIT.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            changed = (await conn.execute(select(*columns).add_cte(*ctes))).one_or_none()
        return self._result(changed)

    async def _apply_in_turn(self, engine: AsyncEngine) -> dict[str, Any]:
        async with engine.begin() as conn:
            row = (await conn.execute(self._job_update())).one_or_none()
            if row is None:
                raise LeaseLost()
            for statement in self._updates:
                await conn.execute(statement)
            new_id = None
            for n, (table, values) in enumerate(self._rows):
                if n == self._id_of:
                    new_id = (await conn.execute(insert(table).values(**values).returning(table.c.id))).scalar_one()
                else:
                    await conn.execute(insert(table).values(**values))
            for selected in self._selected:
                await conn.execute(insert(selected.table).from_select(selected.columns, selected.rows))
        result = self._result(row)
        if self._id_of is not None:
            result["new_id"] = new_id
        return result

    def _result(self, row: Row[Any] | None) -> dict[str, Any]:
        if row is None:
            raise LeaseLost()
        return dict(row._mapping)
