"""URLs of the demo project."""
from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.static import serve

from inbox import views as inbox
from notes import views

urlpatterns = [
    path("", views.home, name="home"),
    path("notes/", views.add_note, name="add-note"),
    path("notes/archive/", views.archive, name="archive"),
    path("uploads/", views.add_upload, name="add-upload"),
    path("inbox/", inbox.queue_note, name="queue-note"),
    path("inbox/queued/", inbox.queued, name="queued"),
    path("healthz/", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Behind Apache these are answered before Django sees them; standalone
    # containers serve them here so that the demo works without a proxy.
    re_path(r"^_content/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    re_path(r"^_assets/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
]
