"""Namespaced app settings: one dict in the host's settings, merged over defaults, cached,
cleared on ``setting_changed``, and checked for keys that mean nothing."""

import difflib

from django.conf import settings
from django.core.checks import Error


class AppSettings:
    """The settings dict ``name`` (for example ``"EXECUTIONS"``) over ``defaults``."""

    def __init__(self, name, defaults):
        self.name, self.defaults = name, defaults
        self._config = None
        self._on_change = []

    def get(self):
        """Return the effective settings."""
        if self._config is None:
            self._config = {**self.defaults, **getattr(settings, self.name, {})}
        return self._config

    def on_change(self, callback):
        """Call ``callback()`` whenever the settings dict changes (``override_settings``)."""
        if callback not in self._on_change:
            self._on_change.append(callback)

    def setting_changed(self, *, setting, **kwargs):
        """The ``setting_changed`` receiver; connect it in the app's ``ready()``."""
        if setting == self.name:
            self._config = None
            for callback in self._on_change:
                callback()

    def check_keys(self, check_id):
        """Return an ``Error`` for each key of the settings dict that has no default: a
        typo would otherwise be ignored without a word."""
        configured = getattr(settings, self.name, {})
        if not isinstance(configured, dict):
            return [
                Error(
                    f"{self.name} must be a dict, not {type(configured).__name__}.",
                    hint=f"Set {self.name} = {{...}} with the keys listed in the app's docs.",
                    id=check_id,
                )
            ]
        return [
            Error(
                f"{self.name} has an unknown key {key!r}.",
                hint=self.hint_for(key),
                id=check_id,
            )
            for key in sorted(set(configured) - set(self.defaults), key=str)
        ]

    def hint_for(self, key):
        valid = ", ".join(self.defaults)
        key = str(key)
        closest = [name for name in self.defaults if len(key) >= 3 and key in name]
        closest = closest or difflib.get_close_matches(key, self.defaults, n=1)
        if closest:
            return f"Did you mean {closest[0]!r}? Valid keys: {valid}."
        return f"Valid keys: {valid}."
