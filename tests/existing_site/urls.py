from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/users/", views.UserList.as_view(), name="user-list"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api-auth/", include("rest_framework.urls")),
    path("status/", views.status, name="status"),
    path("integrations/flows/", include("executions.urls")),
]
