"""A private Apache instance on the host, from Debian's apache2 package, for tests.

It listens on one loopback port and includes the vhosts under test, so a test never
touches the system's own Apache configuration.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
MODULE_NAMES = ["mpm_event", "authz_core", "mime", "log_config", "alias", "rewrite", "headers",
                "proxy", "proxy_http", "wsgi", "unixd", "dir"]


class HostApache:
    def __init__(self, folder: Path, port: int, include: str):
        self.folder, self.port, self.include = folder, port, include
        self.conf = folder / "httpd.conf"

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        modules = "\n".join(
            f"<IfModule !{name}_module>\n    LoadModule {name}_module {MODULES}/mod_{name}.so\n</IfModule>"
            for name in MODULE_NAMES)
        self.conf.write_text(f"""ServerRoot {self.folder}
DefaultRuntimeDir {self.folder}
PidFile {self.folder}/httpd.pid
Listen 127.0.0.1:{self.port}
{modules}
User www-data
Group www-data
ServerName localhost
TypesConfig /etc/mime.types
ErrorLog {self.folder}/error.log
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
WSGISocketPrefix {self.folder}/wsgi
<Directory />
    Options None
    AllowOverride None
    Require all denied
</Directory>
Include {self.include}
""")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([APACHE, "-f", str(self.conf), *args], capture_output=True, text=True)

    def check(self) -> str:
        result = self.run("-t")
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    def start(self) -> None:
        self.write()
        self.check()
        result = self.run("-k", "start")
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)

    def graceful(self) -> None:
        assert self.run("-k", "graceful").returncode == 0

    def stop(self) -> None:
        self.run("-k", "stop")
        for _ in range(50):
            if not (self.folder / "httpd.pid").exists():
                return
            time.sleep(0.1)
