"""Reading user text files line by line, so that one bad line is reported with its number instead of aborting.

Every data file unimir reads is UTF-8 (a leading byte-order mark is accepted). A line that is not valid UTF-8, a
JSON string holding a lone surrogate (``"\\ud800"``, valid JSON but not Unicode) and an id that cannot be written
into a run file or a URL path are each reported with file, line and field.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError, NotFoundError
from .problems import Problems

BOM = "\ufeff"


def iter_lines(path: Path, problems: Problems | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) for each line of a UTF-8 file.

    A line that does not decode is reported to ``problems`` and yielded as an empty line (so line numbers and
    multi-line CSV records stay aligned); without ``problems`` it raises :class:`DataError`.
    """
    if not path.is_file():
        raise NotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                          "re-save the file as UTF-8")
                if problems is None:
                    raise DataError(reason, path=str(path), line=lineno) from None
                problems.add(reason, path=str(path), line=lineno)
                line = "\n"
            if lineno == 1 and line.startswith(BOM):
                line = line[1:]
            yield lineno, line


def csv_rows(path: Path, delimiter: str, problems: Problems | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) of each non-empty CSV/TSV record. Bad quoting (a quote that is never closed
    would swallow the rest of the file into one cell) raises :class:`DataError` naming the record's line."""
    lines = iter_lines(path, problems)
    reader = csv.reader((line for _, line in lines), delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = ("a quoted cell starts here and is never closed" if "end of data" in str(exc)
                    else f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} quoting ({exc})")
            raise DataError(f"{hint}; close or escape the quote (\"\" inside a quoted cell)",
                            path=str(path), line=start) from None
        if any(cell.strip() for cell in row):
            yield start, row


def invalid_unicode_field(obj: Any) -> str | None:
    """The dotted path of the first string (key or value) in a parsed JSON value that is not valid Unicode (a
    lone surrogate), or None. Such strings parse but cannot be encoded, stored or sent. Iterative, so any
    nesting depth that the JSON parser accepted is fine."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return where or "value"
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                path = f"{where}.{key}" if where else str(key)
                if not _encodable(str(key)):
                    return path.encode("utf-8", "backslashreplace").decode()
                stack.append((path, item))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}" if where else str(i), item) for i, item in reversed(list(enumerate(value))))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_text(value: str, what: str) -> None:
    """Raise :class:`~unimir.errors.InvalidInputError` for a string that is not valid Unicode (a lone surrogate,
    or undecodable bytes that Python smuggled in from the command line)."""
    from ..errors import InvalidInputError

    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        code = ord(bad)
        shown = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise InvalidInputError(f"{what} is not valid UTF-8 text ({shown} at position {exc.start + 1})") from None


def id_problem(value: Any, kind: str = "item") -> str | None:
    """Why ``value`` cannot be an item or query id, or None when it can.

    Ids are strings or integers (JSON ``true`` and ``1.5`` are refused rather than turned into "True" or lost),
    one line of printable text (they go into TREC run files, JSONL and URL paths), valid Unicode, and not
    ``.`` or ``..`` (which a URL path would normalise away).
    """
    if value is None or value == "":
        return f"missing {kind} id"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        shown = json.dumps(value) if isinstance(value, (bool, float)) else repr(value)
        return f"{kind} id must be a string or an integer, got {type(value).__name__} {shown}"
    text = str(value)
    for pos, ch in enumerate(text, 1):
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            return (f"{kind} id {text!r} contains {_char_name(ch)} at position {pos}; ids must be one line of "
                    "printable text")
    if text in (".", ".."):
        return f"{kind} id {text!r} cannot round-trip through a URL path; choose another id"
    return None


def _char_name(ch: str) -> str:
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}
    if ch in names:
        return names[ch]
    if 0xD800 <= ord(ch) <= 0xDFFF:
        return f"a lone surrogate U+{ord(ch):04X}"
    return f"the control character U+{ord(ch):04X}"
