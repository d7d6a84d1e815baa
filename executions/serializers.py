from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apikeys.responses import format_timestamp

from .models import Execution, NodeRun


@extend_schema_field(OpenApiTypes.DATETIME)
class TimestampField(serializers.Field):
    """UTC ISO 8601 with milliseconds and ``Z``, as the contract writes every time."""

    def to_representation(self, value):
        return format_timestamp(value)


class SharedFields:
    """Represent every instance with one set of fields per class, built once: DRF builds
    a ``ModelSerializer``'s fields from its model for each serializer, from nothing that
    changes (a seventh of a detail request's time; copying built ones, a tenth). For
    read-only output whose fields need neither the serializer's context nor its instance
    (no request-relative URLs, no method fields)."""

    def to_representation(self, instance):
        shared = type(self).__dict__.get("shared")
        if shared is None:
            shared = type(self).shared = type(self)()
        return super(SharedFields, shared).to_representation(instance)


class NodeRunSerializer(SharedFields, serializers.ModelSerializer):
    started_at = TimestampField()
    completed_at = TimestampField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)

    class Meta:
        model = NodeRun
        fields = [
            "node_id",
            "node_type",
            "status",
            "outputs",
            "error",
            "started_at",
            "completed_at",
            "duration_ms",
        ]


class ExecutionSerializer(SharedFields, serializers.ModelSerializer):
    started_at = TimestampField(allow_null=True)
    completed_at = TimestampField(allow_null=True)
    created_at = TimestampField()
    duration_ms = serializers.IntegerField(allow_null=True)
    nodes = NodeRunSerializer(many=True, source="node_runs")  # lookups.with_node_runs()

    class Meta:
        model = Execution
        fields = [
            "id",
            "workflow_id",
            "status",
            "inputs",
            "outputs",
            "error",
            "started_at",
            "completed_at",
            "created_at",
            "duration_ms",
            "nodes",
        ]


class WorkflowInputSerializer(serializers.Serializer):
    type = serializers.CharField()
    label = serializers.CharField()
    required = serializers.BooleanField()
    description = serializers.CharField()
    default = serializers.JSONField(required=False)
    minimum = serializers.FloatField(required=False, help_text="Inclusive bound.")
    maximum = serializers.FloatField(required=False, help_text="Inclusive bound.")


class WorkflowSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    version = serializers.IntegerField()
    inputs = serializers.DictField(child=WorkflowInputSerializer())
    created_at = TimestampField()
    updated_at = TimestampField()

    def to_representation(self, workflow):
        data = super().to_representation(workflow)
        data["inputs"] = {name: spec.describe() for name, spec in workflow.inputs.items()}
        return data


class StreamTokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    expires_at = TimestampField()
    url = serializers.URLField(help_text="The events URL with ?token=, for EventSource.")


class ExecuteRequestSerializer(serializers.Serializer):
    inputs = serializers.DictField(required=False, default=dict)


class ExecuteResponseSerializer(serializers.Serializer):
    execution_id = serializers.CharField()
    workflow_id = serializers.CharField()
    status = serializers.CharField()
    inputs = serializers.DictField()
