"""The live pages' URLconf. A site includes it under a prefix of its choice, beside the
API's ``executions.urls`` (whose event stream the live page follows):

    path("executions/", include("executions.page_urls")),
    path("api/v1/", include("executions.urls")),
"""

from django.urls import path

from . import pages

app_name = pages.NAMESPACE

urlpatterns = [
    path("", pages.execution_list, name="execution-list"),
    path("<str:execution_id>/", pages.execution_detail, name="execution-detail"),
    path("<str:execution_id>/cancel", pages.execution_cancel, name="execution-cancel"),
]
