"""Page-number pagination in the contract's shape."""

import math

from apikeys.exceptions import ValidationError

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


def positive_int(params, name, default):
    raw = params.get(name)
    if raw in (None, ""):
        return default
    # ASCII digits only (str.isdigit() also accepts "²", which int() rejects), and few
    # enough of them that (page - 1) * per_page stays a valid SQL OFFSET.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or int(raw) < 1:
        raise ValidationError(
            f"{name} must be a positive integer.", details={name: "Must be a positive integer."}
        )
    return int(raw)


def paginate(params, items, count=None):
    """Return ``(page_items, pagination)`` for the ``page``/``per_page`` query parameters.

    ``items`` is a sequence or a queryset; ``per_page`` above the maximum is capped.
    """
    page = positive_int(params, "page", 1)
    per_page = min(positive_int(params, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    total = len(items) if count is None else count
    total_pages = math.ceil(total / per_page)
    start = (page - 1) * per_page
    has_next = page < total_pages
    return items[start : start + per_page], {
        "page": page,
        "per_page": per_page,
        "total_count": total,
        "total_pages": total_pages,
        "has_next": has_next,
        "has_prev": page > 1,
        "has_more": has_next,
    }
