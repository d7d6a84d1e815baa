"""A URLconf a middleware chooses for some requests (``request.urlconf``)."""

from django.urls import path

from .views import alternate_view

urlpatterns = [path("api/v1/workflows", alternate_view)]
