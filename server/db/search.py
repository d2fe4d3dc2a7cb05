"""The DiracX search DSL turned into SQLAlchemy expressions, for any table.

Values arrive as strings or numbers whatever the column; they are converted to the column's
type here, so `{"parameter": "PilotID", "operator": "eq", "value": "5"}` works on PostgreSQL
too (asyncpg refuses a string for an integer parameter), and a value that cannot be converted
is a 400 naming the parameter, never a database error.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
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

from server.errors import InvalidRequest
from server.models import (
    ScalarOperator,
    SearchSpec,
    SortSpec,
    VectorOperator,
    VectorSearch,
)

#: The range of the integer columns (BIGINT); beyond it the drivers fail instead of comparing.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
#: POSIX RE_DUP_MAX, PostgreSQL's limit too: larger `{n}` counts are a database error there.
_MAX_REPEAT = 255
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
#: `.*a.*b.*c` is fine; each further open-ended repetition multiplies the work by the length.
_MAX_WIDE_REPEATS = 3


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
    """Refuse what no database would compile, as a 400 rather than a database error."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidRequest(f"Invalid regular expression for parameter {parameter!r}") from exc
    for match in _REPEAT.finditer(pattern):
        if any(int(n) > _MAX_REPEAT for n in match.groups() if n):
            raise InvalidRequest(f"Repetition counts above {_MAX_REPEAT} are not supported")
    problem = _backtracking_risk(pattern)
    if problem:
        raise InvalidRequest(f"Regular expression for parameter {parameter!r} refused: {problem}")


def _backtracking_risk(pattern: str) -> str | None:
    """Shapes that make a backtracking engine (SQLite runs Python's `re` for REGEXP, holding
    the GIL) take exponential or high-polynomial time: `(a|aa)*c` on 40 characters takes
    minutes and freezes the whole server. Refused on every backend, so the DSL is the same."""
    # the parse tree of the standard library's own compiler (not in the typeshed stubs)
    c: Any = importlib.import_module("re._constants")
    parser: Any = importlib.import_module("re._parser")

    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT)
    wide = 0

    def has_choice(items: Any) -> bool:
        for op, av in items:
            if op in repeats or op is c.BRANCH:
                return True
            if op is c.SUBPATTERN and has_choice(av[3]):
                return True
            if op in (c.ASSERT, c.ASSERT_NOT) and has_choice(av[1]):
                return True
        return False

    def walk(items: Any) -> str | None:
        nonlocal wide
        for op, av in items:
            found = None
            if op in repeats:
                _low, high, sub = av
                if high > 1 and has_choice(sub):
                    return "a repeated group that itself repeats or alternates"
                if high == c.MAXREPEAT or high > 16:
                    wide += 1
                found = walk(sub)
            elif op is c.SUBPATTERN:
                found = walk(av[3])
            elif op is c.BRANCH:
                found = next((f for alt in av[1] if (f := walk(alt))), None)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                found = walk(av[1])
            elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
                return "back-references"
            if found:
                return found
        return None

    problem = walk(parser.parse(pattern))
    if problem is None and wide > _MAX_WIDE_REPEATS:
        problem = f"more than {_MAX_WIDE_REPEATS} open-ended repetitions"
    return problem


def column_for(columns: Mapping[str, Column[Any]], parameter: str) -> Column[Any]:
    try:
        return columns[parameter]
    except KeyError:
        raise InvalidRequest(f"Unknown parameter {parameter!r}") from None


_TEXT_OPERATORS = (ScalarOperator.LIKE, ScalarOperator.NOT_LIKE, ScalarOperator.REGEX)


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
