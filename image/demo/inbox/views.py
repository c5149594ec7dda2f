"""Queue a note: the background process (`manage.py process_notes --loop`) adds it."""
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_POST

from .models import QueuedNote


@require_POST
def queue_note(request):
    text = request.POST.get("text", "").strip()
    if not text or len(text) > 200:
        return HttpResponse("text: 1 to 200 characters", status=400)
    note = QueuedNote.objects.create(text=text)
    return JsonResponse({"queued": note.pk}, status=202)


def queued(request):
    return JsonResponse({"queued": QueuedNote.objects.count()})
