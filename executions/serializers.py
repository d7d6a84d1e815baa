import copy

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


class FieldsBuiltOnce:
    """Build a ``ModelSerializer``'s fields from its model once per class, and give each
    serializer copies: DRF builds them again for every response, from nothing that
    changes, and that was a seventh of a detail request's time."""

    def get_fields(self):
        built = type(self).__dict__.get("built_fields")
        if built is None:
            built = type(self).built_fields = super().get_fields()
        return copy.deepcopy(built)


class NodeRunSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
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


class ExecutionSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    started_at = TimestampField(allow_null=True)
    completed_at = TimestampField(allow_null=True)
    created_at = TimestampField()
    duration_ms = serializers.IntegerField(allow_null=True)
    nodes = NodeRunSerializer(many=True, source="node_runs")  # executions_for(), with_node_runs()

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
