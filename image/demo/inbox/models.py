"""Notes queued for a background process: the demo's use of tenant.yaml `processes:`."""
from django.db import models


class QueuedNote(models.Model):
    text = models.CharField(max_length=200)
    queued = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["queued", "id"]

    def __str__(self):
        return self.text
