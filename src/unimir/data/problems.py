"""Collecting bad input without losing the rest: long jobs skip bad items and report them, unless strict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..errors import DataError


@dataclass(frozen=True)
class Problem:
    path: str | None
    line: int | None
    item: str | None
    message: str

    def __str__(self) -> str:
        where = (self.path or "") + (f":{self.line}" if self.line is not None else "")
        where = " ".join(x for x in (where, f"[{self.item}]" if self.item is not None else "") if x)
        return f"{where}: {self.message}" if where else self.message

    def to_json(self) -> dict:
        return {"path": self.path, "line": self.line, "item": self.item, "message": self.message}


@dataclass
class Problems:
    """A sink for per-item problems. With ``strict=True`` the first problem raises a :class:`DataError`."""

    strict: bool = False
    items: list[Problem] = field(default_factory=list)
    #: things that are not skips but worth saying once per run (e.g. truncated texts): kind -> [count, message]
    notices: dict[str, list] = field(default_factory=dict)

    def add(self, message: str, *, path: str | None = None, line: int | None = None,
            item: str | None = None, field_name: str | None = None) -> None:
        if self.strict:
            prefix = f"[{item}] " if item else ""
            raise DataError(prefix + message, path=path, line=line, field=field_name)
        if field_name is not None:
            message = f"field {field_name!r}: {message}"
        self.items.append(Problem(path, line, item, message))

    def locate(self, path: str | None, ids: Iterable[str], lines: Sequence[int]) -> None:
        """Name ``path`` and the line of each problem about one of its records (``ids[i]`` on line ``lines[i]``)
        that was reported without a line: an image that cannot be encoded, a query without positives."""
        wanted = {p.item for p in self.items if p.line is None and p.item is not None and p.path in (None, path)}
        if not wanted or path is None or not len(lines):
            return
        line_of = {i: line for i, line in zip(ids, lines) if i in wanted}
        self.items = [Problem(path, line_of[p.item], p.item, p.message)
                      if p.line is None and p.item in line_of and p.path in (None, path) else p for p in self.items]

    def notice(self, kind: str, message: str, count: int = 1) -> None:
        """Count a non-fatal event; :meth:`report` states each kind once, with its total count."""
        entry = self.notices.setdefault(kind, [0, message])
        entry[0] += count

    def notes(self) -> list[str]:
        return [f"note: {count} {message}" for count, message in self.notices.values()]

    def report(self, limit: int = 10, full_list: str | None = None) -> str:
        """Skipped items (if any) and notices, for stderr at the end of a command; '' when there is nothing.
        ``full_list`` names the file that lists them all."""
        lines = [self.summary(limit, full_list)] if self.items else []
        return "\n".join(lines + self.notes())

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:  # a Problems sink is always truthy, even when empty
        return True

    def summary(self, limit: int = 10, full_list: str | None = None) -> str:
        lines = [f"{len(self.items)} item(s) skipped:"] + [f"  {p}" for p in self.items[:limit]]
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more "
                         + (f"(all in {full_list})" if full_list else "(--skipped FILE lists them all)"))
        return "\n".join(lines)
