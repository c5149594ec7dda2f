"""Turn queued notes into notes: run once (a scheduled command), or with --loop as a
background process (tenant.yaml `processes:`)."""
import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections, transaction

from inbox.models import QueuedNote
from notes.models import Note


class Command(BaseCommand):
    help = "Add the queued notes to the tenant's notes."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep processing, every --every seconds.")
        parser.add_argument("--every", type=float, default=1.0)

    def handle(self, *args, loop=False, every=1.0, **options):
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        while True:
            done = self.process_batch()
            if done:
                self.stdout.write(f"processed {done} queued notes", ending="\n")
                self.stdout.flush()
            if not loop or stopping:
                return
            close_old_connections()
            time.sleep(every)
            if stopping:
                return

    @staticmethod
    def process_batch(size=100):
        with transaction.atomic():
            batch = list(QueuedNote.objects.select_for_update(skip_locked=True)[:size])
            Note.objects.bulk_create([Note(text=queued.text) for queued in batch])
            QueuedNote.objects.filter(pk__in=[queued.pk for queued in batch]).delete()
        return len(batch)
