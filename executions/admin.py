"""The Django admin for executions: read-only, since executions change only through the
producer API, and the event log is the record every stream replays."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils.html import format_html

from .models import Event, Execution, NodeRun
from .pages import format_duration, live_page_url


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class NodeRunInline(ReadOnlyInline):
    model = NodeRun
    fields = (
        "node_id",
        "node_type",
        "status",
        "started_at",
        "completed_at",
        "duration_ms",
        "outputs",
        "error",
    )
    ordering = ("started_at", "id")


class EventInline(ReadOnlyInline):
    model = Event
    verbose_name = "event"
    verbose_name_plural = "event log"
    fields = ("seq", "type", "data", "created_at")
    ordering = ("seq",)


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "workflow_id",
        "status",
        "owner",
        "mode",
        "created_at",
        "started_at",
        "completed_at",
        "duration",
        "live_page",
    )
    list_filter = ("status", "mode", "workflow_id")
    list_select_related = ("owner",)
    search_fields = ("id", "workflow_id", f"owner__{get_user_model().USERNAME_FIELD}")
    search_help_text = "Search by execution id, workflow id or owner."
    date_hierarchy = "created_at"
    fields = (
        "id",
        "workflow_id",
        "status",
        "owner",
        "mode",
        "live_page",
        "inputs",
        "outputs",
        "error",
        "total_nodes",
        "last_seq",
        "created_at",
        "started_at",
        "completed_at",
        "duration",
    )
    readonly_fields = fields
    inlines = (NodeRunInline, EventInline)

    @admin.display(description="duration")
    def duration(self, execution):
        return format_duration(execution.duration_ms) or "-"

    @admin.display(description="live page")
    def live_page(self, execution):
        url = live_page_url(execution.pk)
        if url is None:
            return "-"
        return format_html('<a href="{}">Watch live</a>', url)

    def view_on_site(self, execution):
        return live_page_url(execution.pk)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
