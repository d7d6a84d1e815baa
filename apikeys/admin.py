"""The Django admin for API keys: create, change, rotate and revoke them.

A raw key appears in exactly one response, the one that issued it: it is not stored,
logged, put in the session or in a message, and that response is never cached.
"""

from dataclasses import dataclass, field

from django.contrib import admin, messages
from django.db import transaction
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.translation import ngettext
from django.views.decorators.debug import sensitive_variables

from .forms import APIKeyChangeForm, APIKeyCreationForm
from .models import APIKey
from .scopes import all_bundles

EXPIRY_AND_RATE_LIMIT_FIELDS = ("expires_at", "rate_limit_per_minute", "rate_limit_per_day")


@dataclass(frozen=True)
class IssuedKey:
    """A key just created, its raw value, and the key it replaces when it was a rotation."""

    key: APIKey
    # Out of the repr: the template engine logs its context, repr and all, at DEBUG.
    raw_key: str = field(repr=False)
    replaces: APIKey | None = None


class StatusListFilter(admin.SimpleListFilter):
    """Filter keys by ``APIKey.status``, computed in the query."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return APIKey.Status.choices

    def queryset(self, request, queryset):
        now = timezone.now()
        match self.value():
            case APIKey.Status.ACTIVE:
                return queryset.active(now)
            case APIKey.Status.EXPIRED:
                return queryset.expired(now)
            case APIKey.Status.REVOKED:
                return queryset.revoked()
        return queryset


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    form = APIKeyChangeForm
    add_form = APIKeyCreationForm
    add_fieldsets = (
        (None, {"fields": ("name", "owner", "mode")}),
        ("Scopes", {"fields": ("scopes", "bundles")}),
        ("Expiry and rate limits", {"fields": EXPIRY_AND_RATE_LIMIT_FIELDS}),
    )
    readonly_fields = (
        "prefix",
        "owner",
        "mode",
        "status",
        "created_at",
        "last_used_at",
        "last_used_ip",
        "revoked_at",
    )
    list_display = ("prefix", "name", "owner", "mode", "scope_summary", "status", "last_used_at")
    list_filter = (StatusListFilter, "mode", ("owner", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("name", "prefix")
    search_help_text = "Search by name or by key prefix (fm_live_AbCd)."
    actions = ("revoke_keys", "rotate_keys")
    issued_keys_template = "admin/apikeys/apikey/issued_keys.html"

    @admin.display(description="status")
    def status(self, key):
        return key.status.label

    @admin.display(description="scopes")
    def scope_summary(self, key):
        """Name the bundle the key's scopes make up, or else list them by resource."""
        held = set(key.scopes)
        for bundle, scopes in all_bundles().items():
            if held == set(scopes):
                return bundle
        actions_by_resource = {}
        for scope in key.scopes:
            resource, _, action = scope.partition(":")
            actions_by_resource.setdefault(resource, []).append(action)
        return "; ".join(
            f"{resource}:{','.join(actions)}" for resource, actions in actions_by_resource.items()
        )

    def has_change_permission(self, request, obj=None):
        """Revoked keys stay for the audit trail: they can be viewed, never changed."""
        if obj is not None and obj.revoked_at is not None:
            return False
        return super().has_change_permission(request, obj)

    def get_actions(self, request, action_location=None):
        # Revoking keeps the audit trail that a bulk delete would erase. Django 6.1 passes
        # ``action_location``; earlier versions pass the request alone.
        location = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **location)
        actions.pop("delete_selected", None)
        return actions

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.add_fieldsets
        # Bundles are only a way to tick scopes, so a read-only page has no use for them.
        can_change = self.has_change_permission(request, obj)
        return (
            (None, {"fields": ("name", "prefix", "owner", "mode", "status")}),
            ("Scopes", {"fields": ("scopes", "bundles") if can_change else ("scopes",)}),
            ("Expiry and rate limits", {"fields": EXPIRY_AND_RATE_LIMIT_FIELDS}),
            ("Use", {"fields": ("created_at", "last_used_at", "last_used_ip", "revoked_at")}),
        )

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def add_view(self, request, form_url="", extra_context=None):
        # Saving always answers with the raw key, so "add another" and "continue" would mislead.
        extra_context = {
            **(extra_context or {}),
            "show_save_and_add_another": False,
            "show_save_and_continue": False,
        }
        return super().add_view(request, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        if not change:
            # The raw key rides on ``obj`` to response_add and dies with the request.
            obj.raw_key = APIKey.objects.assign_key(obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        """Show the new raw key in this response rather than redirecting to a page without it."""
        return self.render_issued_keys(request, "API key created", [IssuedKey(obj, obj.raw_key)])

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        """Revoke each selected key not revoked yet, and say how many were and were not."""
        selected = queryset.count()
        with transaction.atomic():
            keys = list(queryset.filter(revoked_at__isnull=True).select_for_update(of=("self",)))
            for key in keys:
                key.revoke()
                self.log_change(request, key, "Revoked.")
        message = ngettext(
            "Revoked %(count)d API key.", "Revoked %(count)d API keys.", len(keys)
        ) % {"count": len(keys)}
        skipped = selected - len(keys)
        if skipped:
            message += " " + ngettext(
                "Skipped %(count)d that was already revoked.",
                "Skipped %(count)d that were already revoked.",
                skipped,
            ) % {"count": skipped}
        self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Rotate selected API keys", permissions=["add", "change"])
    @sensitive_variables("raw_key")
    def rotate_keys(self, request, queryset):
        """Replace each unrevoked key by a new one with the same settings; show the new raw keys."""
        # One transaction: a failure halfway must not leave keys revoked whose
        # replacements' raw values were never shown. The lock makes two operators
        # rotating one key at once issue one replacement, not two.
        with transaction.atomic():
            skipped = list(queryset.filter(revoked_at__isnull=False))
            issued = []
            for key in queryset.filter(revoked_at__isnull=True).select_for_update(of=("self",)):
                new_key, raw_key = key.rotate()
                self.log_change(request, key, f"Rotated: replaced by {new_key}.")
                self.log_addition(request, new_key, f"Created to replace {key}.")
                issued.append(IssuedKey(new_key, raw_key, replaces=key))
        if not issued:
            self.message_user(
                request, "No key was rotated: revoked keys cannot be rotated.", messages.WARNING
            )
            return None
        return self.render_issued_keys(request, "API keys rotated", issued, skipped)

    def render_issued_keys(self, request, title, issued, skipped=()):
        """Render the raw values of ``issued`` keys once, in a response no cache may keep."""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "issued": issued,
            "skipped": skipped,
        }
        response = TemplateResponse(request, self.issued_keys_template, context)
        # The admin site already marks its views never-cache; a page holding secrets does
        # not rely on how the host site wraps its admin.
        add_never_cache_headers(response)
        return response
