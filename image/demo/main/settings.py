"""Shared settings of the demo project. Each tenant's settings.py imports these
(`from main.settings import *`) and overrides hosts, database, media and title."""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Tenants always override these; the defaults only serve build-time commands
# such as collectstatic.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "build-time-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = []

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notes",
    "inbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "main.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "main.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# The seed's URL layout: release assets under /_assets, tenant media under /_content.
STATIC_URL = "/_assets/"
STATIC_ROOT = BASE_DIR / "www" / "assets"
MEDIA_URL = "/_content/"
MEDIA_ROOT = BASE_DIR / "www" / "content"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SITE_TITLE = "Example App"
SITE_URL = "http://localhost"
TENANT_NAME = ""
