"""The registry of scopes and bundles a key can hold."""

from functools import cache

from .conf import get_config

BUILTIN_SCOPES = {
    "workflows:read": "List and read workflows",
    "workflows:execute": "Start workflow executions",
    "executions:read": "List, read and stream executions",
    "executions:cancel": "Cancel executions",
    "agents:read": "List and read agents",
    "agents:execute": "Run agents",
    "threads:read": "Read threads",
    "threads:write": "Write to threads",
    "triggers:read": "List and read triggers",
    "triggers:execute": "Fire triggers",
    "knowledge-bases:read": "List and read knowledge bases",
    "knowledge-bases:query": "Query knowledge bases",
    "webhooks:read": "List and read webhooks",
    "webhooks:write": "Create and change webhooks",
}

FULL_ACCESS = "full-access"


@cache
def all_scopes():
    """Return ``{scope: description}`` for every registered scope, built-in first."""
    return {**BUILTIN_SCOPES, **get_config()["SCOPES"]}


@cache
def all_bundles():
    """Return ``{bundle: [scopes]}`` for every registered bundle."""
    scopes = all_scopes()
    bundles = {
        "read-only": [s for s in scopes if s.endswith(":read")],
        "workflow-executor": [
            "workflows:read",
            "workflows:execute",
            "executions:read",
            "executions:cancel",
        ],
        FULL_ACCESS: list(scopes),
    }
    bundles.update({name: list(members) for name, members in get_config()["BUNDLES"].items()})
    return bundles


def clear_registry_cache():
    all_scopes.cache_clear()
    all_bundles.cache_clear()


def scopes_by_resource():
    """Return ``[(resource, [(scope, description), ...]), ...]`` in registry order."""
    grouped = {}
    for scope, description in all_scopes().items():
        grouped.setdefault(scope.split(":", 1)[0], []).append((scope, description))
    return list(grouped.items())


def unknown_scopes(scopes):
    """Return the names in ``scopes`` that are not registered, sorted."""
    return sorted(set(scopes) - set(all_scopes()))


def expand(scopes=(), bundles=()):
    """Return the scopes named directly or through bundles, in registry order.

    Raise ``ValueError`` naming any unknown scope or bundle.
    """
    known_bundles = all_bundles()
    missing_bundles = sorted(set(bundles) - set(known_bundles))
    if missing_bundles:
        raise ValueError(
            f"Unknown bundle: {', '.join(missing_bundles)}. Known: {', '.join(known_bundles)}."
        )
    names = set(scopes).union(*(known_bundles[b] for b in bundles))
    missing = unknown_scopes(names)
    if missing:
        raise ValueError(f"Unknown scope: {', '.join(missing)}.")
    return sorted(names, key=list(all_scopes()).index)
