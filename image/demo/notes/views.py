"""Views of the demo: a home page per tenant, a form to add notes and uploads, health."""
from django import forms
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from .models import Note, Upload


class NoteForm(forms.ModelForm):
    class Meta:
        model = Note
        fields = ["text"]


class UploadForm(forms.ModelForm):
    class Meta:
        model = Upload
        fields = ["file"]


def home(request):
    return render(request, "notes/home.html", {
        "site_title": settings.SITE_TITLE,
        "tenant_name": settings.TENANT_NAME,
        "database": connection.settings_dict["NAME"],
        "notes": Note.objects.all()[:50],
        "uploads": Upload.objects.all()[:50],
        "note_form": NoteForm(),
        "upload_form": UploadForm(),
    })


def archive(request):
    """Every note on one page: the demo's content-heavy page (bench/memory.py sizes the
    default memory limit on it)."""
    return render(request, "notes/archive.html", {"site_title": settings.SITE_TITLE, "notes": Note.objects.all()})


@require_POST
def add_note(request):
    form = NoteForm(request.POST)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400)
    form.save()
    return redirect("home")


@require_POST
def add_upload(request):
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400)
    upload = form.save()
    return redirect(f"{settings.MEDIA_URL}{upload.file.name}")


def healthz(request):
    """200 when the tenant's database answers, 503 otherwise."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any database failure means unhealthy
        return JsonResponse({"status": "error", "error": type(exc).__name__}, status=503)
    return JsonResponse({"status": "ok", "tenant": settings.TENANT_NAME, "scheme": request.scheme})
