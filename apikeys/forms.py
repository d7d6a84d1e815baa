"""Forms for API keys: scopes as checkboxes grouped by resource, plus bundles of scopes."""

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from .models import APIKey
from .scopes import all_bundles, expand, scopes_by_resource


def scope_choices():
    """Return every registered scope as a choice, grouped by resource."""
    return [
        (resource, [(scope, f"{scope} — {description}") for scope, description in scopes])
        for resource, scopes in scopes_by_resource()
    ]


def bundle_choices():
    """Return every registered bundle as a choice labelled with the scopes it adds."""
    return [(bundle, f"{bundle} — {', '.join(scopes)}") for bundle, scopes in all_bundles().items()]


class ScopeSelectionForm(forms.ModelForm):
    """Choose a key's scopes directly or through bundles.

    Once the form is valid, ``cleaned_data["scopes"]`` holds every chosen scope, those
    the bundles add included, and there is at least one.
    """

    # Callable choices are read on each use, so scopes the host site registers appear.
    scopes = forms.MultipleChoiceField(
        choices=scope_choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    bundles = forms.MultipleChoiceField(
        choices=bundle_choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each bundle ticked here adds its scopes to those ticked above.",
    )

    def clean(self):
        cleaned_data = super().clean()
        if "scopes" in cleaned_data and "bundles" in cleaned_data:
            cleaned_data["scopes"] = expand(cleaned_data["scopes"], cleaned_data["bundles"])
            if not cleaned_data["scopes"]:
                self.add_error("scopes", "Choose at least one scope, directly or through a bundle.")
        return cleaned_data


class APIKeyCreationForm(ScopeSelectionForm):
    """Describe a new key; the admin gives it its secret when saving."""

    class Meta:
        model = APIKey
        fields = [
            "name",
            "owner",
            "mode",
            "scopes",
            "bundles",
            "expires_at",
            "rate_limit_per_minute",
            "rate_limit_per_day",
        ]

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise ValidationError("A new key must expire in the future, or never.")
        return expires_at


class APIKeyChangeForm(ScopeSelectionForm):
    """Change what an existing key may do; who owns it and its mode stay as created."""

    class Meta:
        model = APIKey
        fields = [
            "name",
            "scopes",
            "bundles",
            "expires_at",
            "rate_limit_per_minute",
            "rate_limit_per_day",
        ]
