"""The DiracX search DSL turned into SQLAlchemy expressions, for any table.

Values arrive as strings or numbers whatever the column; they are converted to the column's
type here, so `{"parameter": "PilotID", "operator": "eq", "value": "5"}` works on PostgreSQL
too (asyncpg refuses a string for an integer parameter), and a value that cannot be converted
is a 400 naming the parameter, never a database error.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    Double,
    Float,
    Integer,
    Result,
    and_,
    bindparam,
    not_,
)
from sqlalchemy.sql.schema import Column

from server.db import regex
from server.errors import InvalidRequest, TooLarge
from server.models import (
    ScalarOperator,
    SearchSpec,
    SortSpec,
    VectorOperator,
    VectorSearch,
)

#: The range of the integer columns (BIGINT); beyond it the drivers fail instead of comparing.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def parse_datetime(value: str) -> datetime:
    """ISO 8601, `Z` or offset or naive (taken as UTC) -> naive UTC, as the columns store it."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _convert(column: Column[Any], value: Any, parameter: str) -> Any:
    kind = column.type
    try:
        if isinstance(kind, Boolean):
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if isinstance(kind, Integer):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            number = int(value)
            if not _INT_MIN <= number <= _INT_MAX:
                raise ValueError(value)
            return number
        if isinstance(kind, Double | Float):
            real = float(value)
            if not math.isfinite(real):
                raise ValueError(value)
            return real
        if isinstance(kind, DateTime):
            return parse_datetime(str(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"Invalid value {value!r} for parameter {parameter!r}") from exc
    return str(value)


def _is_text(column: Column[Any]) -> bool:
    return not isinstance(column.type, Boolean | Integer | Double | Float | DateTime)


def _check_regex(pattern: str, parameter: str) -> None:
    """Refuse what is outside the one dialect every backend reads the same way (see
    `server.db.regex`), as a 400 naming the reason, before any database sees it."""
    try:
        regex.check(pattern)
    except regex.RegexRefused as exc:
        raise InvalidRequest(
            f"Regular expression for parameter {parameter!r} refused: {exc}"
        ) from None


#: Bound values one statement may carry, where the backend has a fixed limit (asyncpg's
#: protocol field is 16 bits wide; MariaDB's prepared statements); SQLite's is read at run time.
_BOUND_VALUE_LIMITS = {"postgresql": 32767, "mysql": 65535, "mariadb": 65535}
#: Bound values a search statement adds to its conditions' (page size and offset).
_STATEMENT_VALUES = 2


@lru_cache(maxsize=1)
def _sqlite_variable_limit() -> int:
    """SQLITE_MAX_VARIABLE_NUMBER of the SQLite library this process runs (32766 since 3.32,
    999 before; a build may set its own)."""
    with closing(sqlite3.connect(":memory:")) as conn:
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def bound_value_limit(dialect: str) -> int:
    if dialect == "sqlite":
        return _sqlite_variable_limit()
    return _BOUND_VALUE_LIMITS.get(dialect, 32767)


def check_bound_values(dialect: str, specs: Sequence[SearchSpec]) -> int:
    """A search whose conditions need more bound values than the database takes in one
    statement is the request's size, not an outage: TooLarge (413) naming the limit, before
    the driver fails with an error the app would answer as "database unavailable" (503).
    Returns the count: a caller may send the conditions twice in one statement if that fits."""
    count = _STATEMENT_VALUES + sum(
        len(s.values) if isinstance(s, VectorSearch) else 1 for s in specs
    )
    limit = bound_value_limit(dialect)
    if count > limit:
        raise TooLarge(
            f"The search needs {count} values (its conditions' values, the caller's VO scope "
            f"and the page); this server's database takes at most {limit} in one statement"
        )
    return count


def column_for(columns: Mapping[str, Column[Any]], parameter: str) -> Column[Any]:
    try:
        return columns[parameter]
    except KeyError:
        raise InvalidRequest(f"Unknown parameter {parameter!r}") from None


_TEXT_OPERATORS = (ScalarOperator.LIKE, ScalarOperator.NOT_LIKE, ScalarOperator.REGEX)


def may_start_inline(specs: Sequence[SearchSpec]) -> bool:
    """Whether a search's statements may start on the event loop (`Database.bounded_read`'s
    `inline_first`): true when no condition is a text operator (like, not_like, regex), so
    testing a row is a fixed, small number of SQLite VM steps and the inline slice bounds how
    long the loop is held. Any other search, whatever its size, runs in the worker thread from
    its first step: a regular expression over a long value is one step of unbounded cost.
    Comparisons, `in` and `not_in` qualify on any column: a scan without an index is many
    cheap steps, stopped at the slice and finished off the loop under the time budget."""
    return not any(not isinstance(s, VectorSearch) and s.operator in _TEXT_OPERATORS for s in specs)


def _value(column: Column[Any], spec: SearchSpec) -> Any:
    """A condition's value, checked and converted for its column: the one place both the
    one-off clauses (`condition`) and the cached shapes (`bound_values`) check values."""
    if isinstance(spec, VectorSearch):
        return [_convert(column, v, spec.parameter) for v in spec.values]
    op = spec.operator
    if op in _TEXT_OPERATORS:
        if not _is_text(column):
            raise InvalidRequest(
                f"Operator {op.value!r} needs a text parameter, not {spec.parameter!r}"
            )
        pattern = str(spec.value)
        if op is ScalarOperator.REGEX:
            _check_regex(pattern, spec.parameter)
        return pattern
    if op in (ScalarOperator.GT, ScalarOperator.LT) and isinstance(column.type, Boolean):
        raise InvalidRequest(f"Operator {op.value!r} cannot compare {spec.parameter!r}")
    return _convert(column, spec.value, spec.parameter)


def _clause(column: Column[Any], operator: str, vector: bool, value: Any) -> ColumnElement[bool]:
    """One condition on `column`; `value` is a checked value or a bound parameter."""
    if vector:
        return column.in_(value) if operator == VectorOperator.IN.value else column.not_in(value)
    op = ScalarOperator(operator)
    if op is ScalarOperator.LIKE:
        return column.like(value)
    if op is ScalarOperator.NOT_LIKE:
        return not_(column.like(value))
    if op is ScalarOperator.REGEX:
        return column.regexp_match(value)
    if op is ScalarOperator.EQ:
        return column.__eq__(value)
    if op is ScalarOperator.NEQ:
        return column.__ne__(value)
    if op is ScalarOperator.GT:
        return column.__gt__(value)
    return column.__lt__(value)


def condition(columns: Mapping[str, Column[Any]], spec: SearchSpec) -> ColumnElement[bool]:
    column = column_for(columns, spec.parameter)
    vector = isinstance(spec, VectorSearch)
    return _clause(column, spec.operator.value, vector, _value(column, spec))


def where_clause(
    columns: Mapping[str, Column[Any]], specs: Sequence[SearchSpec]
) -> ColumnElement[bool] | None:
    conditions = [condition(columns, spec) for spec in specs]
    return and_(*conditions) if conditions else None


# --- the same DSL as statements built once per shape -----------------------------------------
#
# A hot route (a dashboard's search, the summary) sends the same shape of query with other
# values. Building the SQLAlchemy statement costs more than running it on SQLite (coercions,
# cache-key generation on every new object); a statement built once with bound parameters is
# cache-keyed once and its compiled form reused. `shape` is the hashable key, `bound_where`
# builds the clause for a shape, `bound_values` checks and converts one request's values.

#: One condition's shape: (parameter, operator, vector?)
SpecShape = tuple[str, str, bool]


def shape(specs: Sequence[SearchSpec]) -> tuple[SpecShape, ...]:
    return tuple((s.parameter, s.operator.value, isinstance(s, VectorSearch)) for s in specs)


def bound_values(columns: Mapping[str, Column[Any]], specs: Sequence[SearchSpec]) -> dict[str, Any]:
    """The values for `bound_where(columns, shape(specs))`, checked as `condition` checks
    them (same errors, same order)."""
    return {
        f"w{i}": _value(column_for(columns, spec.parameter), spec) for i, spec in enumerate(specs)
    }


def bound_where(
    columns: Mapping[str, Column[Any]], shapes: Sequence[SpecShape]
) -> ColumnElement[bool] | None:
    """The WHERE clause of `shapes` with bound parameters w0, w1, ... (see `bound_values`,
    which has checked the parameter names and the operators' column types)."""
    conditions: list[ColumnElement[bool]] = []
    for i, (parameter, operator, vector) in enumerate(shapes):
        column = columns[parameter]
        name = f"w{i}"
        if vector:
            value = bindparam(name, type_=column.type, expanding=True)
        elif ScalarOperator(operator) in _TEXT_OPERATORS:
            value = bindparam(name)
        else:
            value = bindparam(name, type_=column.type)
        conditions.append(_clause(column, operator, vector, value))
    return and_(*conditions) if conditions else None


def order_by(columns: Mapping[str, Column[Any]], sort: Sequence[SortSpec]) -> list[Any]:
    clauses = []
    for spec in sort:
        column = column_for(columns, spec.parameter)
        clauses.append(column.desc() if spec.direction == "desc" else column.asc())
    return clauses


def rows_as_dicts(result: Result[Any]) -> list[dict[str, Any]]:
    """Result rows as dicts keyed by column name; datetimes stay datetimes, and the response
    encoder writes them as DiracX does (naive ISO 8601, UTC)."""
    keys = [str(k) for k in result.keys()]  # noqa: SIM118 - plain str keys for orjson
    # all() fetches and processes the rows in one go; iterating the result fetches one by one
    return [dict(zip(keys, row, strict=True)) for row in result.all()]
