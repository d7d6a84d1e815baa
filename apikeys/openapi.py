"""OpenAPI (drf-spectacular) support: the key's security schemes and each view's scopes."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_doc
from drf_spectacular.utils import extend_schema

SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer", "bearerFormat": "fm_live_... / fm_test_..."},
}


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apikeys.authentication.APIKeyAuthentication"
    name = list(SECURITY_SCHEMES)

    def get_security_requirement(self, auto_schema):
        # One requirement object per scheme: either header authenticates, not both at once.
        return [{name: []} for name in SECURITY_SCHEMES]

    def get_security_definition(self, auto_schema):
        return list(SECURITY_SCHEMES.values())


class ScopedAutoSchema(AutoSchema):
    """Document ``view.required_scopes`` as ``x-required-scopes`` and in the description."""

    def get_description(self):
        # A view documents itself: inspect.getdoc() would lend it its base class's docstring.
        method = getattr(self.view, getattr(self.view, "action", self.method.lower()), None)
        own = get_doc(type(self.view)) if type(self.view).__doc__ else ""
        return get_doc(method) or own

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        scopes = getattr(self.view, "required_scopes", None)
        if operation is not None and scopes:
            operation["x-required-scopes"] = list(scopes)
            note = f"Required scopes: {', '.join(f'`{s}`' for s in scopes)}."
            operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
        return operation


def extend_scoped_schema(**kwargs):
    """``extend_schema(**kwargs)`` for a method of a ``ScopedAPIView``.

    drf-spectacular's decorator cannot see a method's class, so it extends the host's
    ``DEFAULT_SCHEMA_CLASS``, which need not be drf-spectacular's; this one extends
    ``ScopedAutoSchema`` whatever the host's ``REST_FRAMEWORK`` says.
    """

    def decorator(method):
        method.schema = ScopedAutoSchema  # the base extend_schema() builds on
        return extend_schema(**kwargs)(method)

    return decorator
