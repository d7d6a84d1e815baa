from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="execution_pages:execution-list")),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("executions/", include("executions.page_urls")),
    path("api/v1/", include("executions.urls")),
    path("", include("executions.monitoring_urls")),  # /healthz, /readyz, /metrics
]
