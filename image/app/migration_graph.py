"""Print, as JSON, the migrations the code defines for the current settings' apps.

Reads migration files only (no database), so tenantkit can compare one release's
graph against every tenant's django_migrations table and migrate only where needed.
Each entry: [app, name, [[app, name], ...replaced migrations]].
"""
import json
import os
import sys

import django

sys.path.insert(0, os.getcwd())  # the project (WORKDIR /app), as manage.py would have it
django.setup()

from django.db.migrations.loader import MigrationLoader  # noqa: E402

loader = MigrationLoader(None, ignore_no_migrations=True)
print(json.dumps([
    [app, name, [list(key) for key in (loader.graph.nodes[(app, name)].replaces or [])]]
    for app, name in sorted(loader.graph.nodes)
]))
