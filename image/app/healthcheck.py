"""Container health check: GET the tenant's health path with its own Host header.

Django rejects requests whose Host is not in ALLOWED_HOSTS, so the check must speak
as the tenant's primary host, not as 127.0.0.1.
"""
import http.client
import os
import sys


def main():
    host = os.environ.get("TENANTKIT_HEALTH_HOST", "localhost")
    path = os.environ.get("TENANTKIT_HEALTH_PATH", "/healthz/")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=5)
        conn.request("GET", path, headers={"Host": host})
        status = conn.getresponse().status
    except OSError as exc:
        print(f"unhealthy: {exc}")
        return 1
    if status != 200:
        print(f"unhealthy: {path} answered {status}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
