"""What JSON the API stores and sends: client bodies and producers' payloads alike must be
JSON the database can keep (PostgreSQL's ``jsonb`` and ``text`` take no NUL character and
no lone UTF-16 surrogate) and shallow enough to encode without exhausting the stack."""

import math

MAX_DEPTH = 32


def unstorable(value, max_depth=MAX_DEPTH):
    """Return why ``value`` cannot be stored and sent as JSON, or None when it can."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > max_depth:
            return f"it nests deeper than {max_depth} levels"
        if isinstance(item, str):
            problem = unstorable_text(item)
            if problem:
                return problem
        elif isinstance(item, dict):
            for key, member in item.items():
                if not isinstance(key, str):
                    return f"an object key is a {type(key).__name__}, not a string"
                pending.append((key, depth + 1))
                pending.append((member, depth + 1))
        elif isinstance(item, list | tuple):
            pending.extend((member, depth + 1) for member in item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "a number is not finite (NaN or infinity)"
        elif not (item is None or isinstance(item, bool | int)):
            return f"a value of type {type(item).__name__} is not JSON"
    return None


def unstorable_text(text):
    """Return why the string ``text`` cannot be stored, or None when it can."""
    if "\x00" in text:
        return "a string holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a string holds a lone UTF-16 surrogate"
    return None


def storable_text(text):
    """Return ``text`` with each character the database cannot store replaced by U+FFFD."""
    if unstorable_text(text) is None:
        return text
    return "".join("\ufffd" if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch for ch in text)
