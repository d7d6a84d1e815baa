"""The host site's URLs plus views that exist only for the tests."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("test-only/", include(views.urlpatterns)),
    path("", include("flowmaestro.urls")),
]
