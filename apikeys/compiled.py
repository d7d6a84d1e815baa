"""Hot queries compiled to SQL once per process, then run with each request's values.

For a query that reads a row or a few by an index, Django's ORM spends more building
the SQL (the queryset's clones and filters, ``SQLCompiler.as_sql()``) than the database
spends answering it: 0.3 to 0.6 ms for each of the three queries of every stream opened
and of every API request. A ``CompiledQuery`` has the ORM build and compile its
queryset once, with stand-in values, and runs that SQL again with the real ones,
converting the rows as the ORM does.
"""

import re
import secrets
from functools import cache

from django.db import connections

try:
    import psycopg
    from django.db.backends.postgresql.psycopg_any import BaseTzLoader
    from psycopg.adapt import Loader
    from psycopg.pq import Format
    from psycopg.types.datetime import TimestamptzLoader

    TIMESTAMPTZ = psycopg.adapters.types["timestamptz"]
except ImportError:  # no psycopg 3: SQLite, or psycopg2
    TIMESTAMPTZ = None


class CompiledQuery:
    """A ``values_list()`` queryset compiled once per database and shape.

    ``build(shape, **values)`` returns the queryset. Each value is a string or an integer
    that the query compares with a column, or an integer it slices by (Django writes a
    LIMIT and an OFFSET into the SQL's text: they become parameters there), so that it
    reaches the SQL unchanged; ``shape`` is whatever else changes the SQL, and so are
    the names of the values given (a filter left out when its value is not). ``build``
    never sees the real values: checks that depend on them come before.
    """

    def __init__(self, build):
        self.build = build
        self.compiled = {}

    def rows(self, using, shape=(), **values):
        """Return the rows, as tuples, that the queryset gives for ``values`` on ``using``."""
        key = (using, shape, *((name, type(value)) for name, value in values.items()))
        compiled = self.compiled.get(key, MISSING)
        if compiled is MISSING:
            compiled = self.compiled[key] = Compiled.of(self.build, using, shape, values)
        if compiled is None:  # values the SQL would not take as they are (a UUID)
            return list(self.build(shape, **values).using(using))
        return compiled.run(using, values)


MISSING = object()


class Compiled:
    """One shape's SQL, where its values go among the parameters, and its converters."""

    __slots__ = ("converters", "params", "sql")

    def __init__(self, sql, params, converters):
        self.sql, self.params, self.converters = sql, params, converters

    @classmethod
    def of(cls, build, using, shape, values):
        """Compile ``build``'s queryset for values like ``values``; None when one of them
        would not reach the SQL as a parameter unchanged."""
        if not all(type(value) in (str, int) for value in values.values()):
            return None
        standins = {standin(value): name for name, value in values.items()}
        queryset = build(shape, **{name: value for value, name in standins.items()})
        compiler = queryset.query.get_compiler(using)
        sql, params = compiler.as_sql()
        params = [Slot(standins[p], type(p)) if is_standin(p, standins) else p for p in params]
        sql, params = parameterize_literals(sql, params, standins)
        if set(values) != {p.name for p in params if isinstance(p, Slot)}:
            return None
        columns = [column for column, _, _ in compiler.select[: compiler.col_count]]
        return cls(sql, params, list(compiler.get_converters(columns).items()))

    def run(self, using, values):
        params = [p.value_in(values) if isinstance(p, Slot) else p for p in self.params]
        connection = connections[using]
        with connection.cursor() as cursor:
            load_timestamps_in_c(cursor.cursor)
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        if not self.converters:
            return rows
        return [self.convert(list(row), connection) for row in rows]

    def convert(self, row, connection):
        # As SQLCompiler.apply_converters() does, with this thread's connection.
        for position, (converters, expression) in self.converters:
            value = row[position]
            for converter in converters:
                value = converter(value, expression, connection)
            row[position] = value
        return tuple(row)


def load_timestamps_in_c(cursor):
    """Have a psycopg 3 ``cursor`` load ``timestamptz`` values with psycopg's C loader, as
    Django's loader gives them (the cursor's own time zone put in place).

    Django's loader derives from psycopg's pure-Python one, as the C one cannot be
    subclassed (Django ticket #36960): 3.0 µs a value against 0.9 here, and a sixth of
    the executions list's time. Only this cursor changes; a loader of the host's own, or
    no C implementation, is left as it is.
    """
    adapters = getattr(cursor, "adapters", None)  # psycopg2 has none
    if adapters is None or TIMESTAMPTZ is None:
        return
    loader = c_timestamp_loader(adapters.get_loader(TIMESTAMPTZ.oid, Format.TEXT))
    if loader is not None:
        adapters.register_loader(TIMESTAMPTZ.oid, loader)


@cache
def c_timestamp_loader(django_loader):
    """A loader that gives what ``django_loader`` gives, through psycopg's C loader; None
    when ``django_loader`` is not Django's or psycopg has no C loader."""
    c_loader = psycopg.adapters.get_loader(TIMESTAMPTZ.oid, Format.TEXT)
    if django_loader is None or not issubclass(django_loader, BaseTzLoader):
        return None
    if c_loader is None or issubclass(c_loader, TimestamptzLoader):  # the Python one
        return None
    tz = django_loader.timezone

    class CTimestampLoader(Loader):
        def __init__(self, oid, context=None):
            super().__init__(oid, context)
            self.c_load = c_loader(oid, context).load

        def load(self, data):
            return self.c_load(data).replace(tzinfo=tz)

    return CTimestampLoader


class Slot:
    """Where a value goes among a compiled query's parameters, and the type the backend
    gave it there (psycopg's ``Int4`` for an integer column on PostgreSQL)."""

    __slots__ = ("cast", "name")

    def __init__(self, name, cast):
        self.name, self.cast = name, cast

    def value_in(self, values):
        value = values[self.name]
        return value if type(value) is self.cast else self.cast(value)


def standin(value):
    """Return a value of ``value``'s type (a string or an integer) that nothing else in a
    query would hold."""
    if type(value) is str:
        return f"~{secrets.token_hex(8)}"
    # Within a 32-bit column's range: Django drops a comparison with a value beyond it.
    return 1_000_000_000 + secrets.randbelow(1_000_000_000)


def parameterize_literals(sql, params, standins):
    """Return ``sql`` and ``params`` with each integer stand-in that the SQL's text holds
    once (where Django wrote a LIMIT or an OFFSET) made a parameter."""
    for value, name in standins.items():
        if type(value) is not int:
            continue
        found = list(re.finditer(rf"(?<![\w.]){value}(?![\w.])", sql))
        if len(found) != 1:
            continue
        start, end = found[0].span()
        before = sql[:start].replace("%%", "").count("%s")
        sql = f"{sql[:start]}%s{sql[end:]}"
        params = [*params[:before], Slot(name, int), *params[before:]]
    return sql, params


def is_standin(param, standins):
    return isinstance(param, (str, int)) and not isinstance(param, bool) and param in standins


@cache
def concrete_attnames(model):
    """The attnames of ``model``'s concrete fields, in the order ``Model.from_db()`` takes
    them (and ``values_list()`` reads them)."""
    return tuple(field.attname for field in model._meta.concrete_fields)
