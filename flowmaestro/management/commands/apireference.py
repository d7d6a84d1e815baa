from django.core.management.base import BaseCommand
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings

from executions.schema import SCHEMA_SETTINGS

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def resolve(schema, node):
    """Follow ``$ref`` pointers into ``components``."""
    while isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node


def describe_type(schema, node):
    node = resolve(schema, node)
    if "allOf" in node:
        return describe_type(schema, node["allOf"][0])
    kind = node.get("type", "object")
    if kind == "array":
        return f"array of {describe_type(schema, node.get('items', {}))}"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"] if value is not None)
    if node.get("format"):
        kind = f"{kind} ({node['format']})"
    return f"{kind}, nullable" if node.get("nullable") else kind


def field_rows(schema, node, prefix=""):
    """Yield ``(name, type)`` for the fields of an object schema, nested ones dotted."""
    node = resolve(schema, node)
    for name, prop in node.get("properties", {}).items():
        yield f"{prefix}{name}", describe_type(schema, prop)
        target = resolve(schema, prop)
        if target.get("type") == "array":
            target = resolve(schema, target.get("items", {}))
        if target.get("properties") and name not in ("meta", "error"):
            yield from field_rows(schema, target, f"{prefix}{name}.")


def render(schema):
    lines = [
        f"# {schema['info']['title']}: API reference",
        "",
        "Generated from the OpenAPI schema (`GET /api/v1/schema/`) by "
        "`python manage.py apireference > docs/api-reference.md`; do not edit by hand.",
        "",
        schema["info"].get("description", ""),
        "",
        'Successful answers are `{"data": ..., "meta": {"request_id", "timestamp"}}` '
        '(lists add `pagination`); errors are `{"error": {"code", "message", '
        '"details"}, "meta": {...}}`.',
        "",
    ]
    for path, operations in schema["paths"].items():
        for method in HTTP_METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            lines += [
                f"## `{method.upper()} {path}`",
                "",
                f"**{operation.get('summary', '')}**",
                "",
            ]
            if operation.get("description"):
                lines += [operation["description"], ""]
            parameters = operation.get("parameters", [])
            if parameters:
                lines += ["| parameter | in | type | meaning |", "|---|---|---|---|"]
                for parameter in parameters:
                    lines.append(
                        f"| `{parameter['name']}` | {parameter['in']} | "
                        f"{describe_type(schema, parameter.get('schema', {}))} | "
                        f"{parameter.get('description', '')} |"
                    )
                lines.append("")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                lines += ["Request body:", "", "| field | type |", "|---|---|"]
                lines += [f"| `{n}` | {t} |" for n, t in field_rows(schema, body["schema"])]
                lines.append("")
            lines += ["| status | answer |", "|---|---|"]
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                if "application/json" in content:
                    ref = content["application/json"]["schema"].get("$ref", "")
                    answer = f"`{ref.rsplit('/', 1)[-1]}`" if ref else "JSON"
                elif content:
                    answer = f"`{next(iter(content))}`"
                else:
                    answer = "no body"
                lines.append(f"| {status} | {answer} {response.get('description', '')} |")
            success = next(
                (
                    response["content"]["application/json"]["schema"]
                    for status, response in operation["responses"].items()
                    if status.startswith("2") and "application/json" in response.get("content", {})
                ),
                None,
            )
            if success:
                lines += ["", "Fields of a successful answer:", "", "| field | type |", "|---|---|"]
                lines += [f"| `{n}` | {t} |" for n, t in field_rows(schema, success)]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


class Command(BaseCommand):
    help = "Print the API reference in Markdown, generated from the OpenAPI schema."

    def handle(self, *args, **options):
        with patched_settings(SCHEMA_SETTINGS):
            schema = SchemaGenerator().get_schema(request=None, public=True)
        self.stdout.write(render(schema), ending="")
