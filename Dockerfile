# The shared Django image: built once per code version, run as one container per tenant.
#
# `tenant build` (or `tenant up`) assembles the build context, so the Django project
# may live anywhere on disk:
#   source/                  the project folder named in tenantkit.yaml (holds manage.py)
#   requirements/project.txt the project's requirements file
#   requirements/runtime.txt what every tenant container needs (gunicorn, psycopg2)
#   wheelhouse/              wheels for offline installs; empty means "install from PyPI"
#   image/app/               tenantkit's runtime helpers (health check)
#
# With a registry this builds FROM python:X-slim (images.python in tenantkit.yaml); an
# air-gapped host passes a base image it built itself (image/offline/build-bases.sh:
# Debian 12's Python 3.11 or Debian 13's 3.13) as BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

COPY requirements/ /tmp/requirements/
COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/venv \
 && if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
            -r /tmp/requirements/project.txt -r /tmp/requirements/runtime.txt; \
    else \
        pip install --no-cache-dir -r /tmp/requirements/project.txt -r /tmp/requirements/runtime.txt; \
    fi \
 && rm -rf /tmp/requirements /tmp/wheelhouse

COPY image/app/ /opt/tenantkit/
COPY source/ /app/
WORKDIR /app

# Collected static files belong to the release (served as /_assets by Apache, as in the
# seed); they are staged in /opt/tenantkit/assets, where `tenant up` extracts them from.
# A project whose settings cannot load at build time simply ships none.
ARG SETTINGS_MODULE=main.settings
RUN mkdir -p /srv/tenants /opt/tenantkit/assets \
 && export DJANGO_SETTINGS_MODULE=$SETTINGS_MODULE \
 && if python manage.py collectstatic --noinput -v0; then \
        static_root=$(python -c 'from django.conf import settings; print(settings.STATIC_ROOT or "")'); \
        if [ -n "$static_root" ]; then cp -a "$static_root"/. /opt/tenantkit/assets/; fi; \
    else \
        echo "collectstatic skipped: $SETTINGS_MODULE did not load at build time"; \
    fi

# Tenants never run as root; their media folders are owned by this uid on the host.
USER 10001:10001
# The user has no home; /tmp is writable (a tmpfs in tenants' containers): gunicorn 25.1+
# puts its control socket under $HOME.
ENV HOME=/tmp
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--preload", "django.core.wsgi:get_wsgi_application()"]
