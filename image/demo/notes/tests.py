"""The demo's own tests: `tenant test acme` runs them in tenant acme's context (its
settings, on a throwaway database tenantkit makes for the run)."""
from django.conf import settings
from django.test import TestCase

from .models import Note


class NotesTests(TestCase):
    def test_the_home_page_shows_the_tenants_title_and_notes(self):
        Note.objects.create(text="first note")
        page = self.client.get("/", HTTP_HOST=settings.ALLOWED_HOSTS[0])
        self.assertContains(page, settings.SITE_TITLE)
        self.assertContains(page, "first note")

    def test_a_note_is_added_by_post(self):
        response = self.client.post("/notes/", {"text": "from a test"}, HTTP_HOST=settings.ALLOWED_HOSTS[0])
        self.assertEqual(response.status_code, 302)
        self.assertEqual(list(Note.objects.values_list("text", flat=True)), ["from a test"])

    def test_health_answers(self):
        response = self.client.get("/healthz/", HTTP_HOST=settings.ALLOWED_HOSTS[0])
        self.assertEqual(response.json()["status"], "ok")
