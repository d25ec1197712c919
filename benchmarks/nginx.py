"""nginx in front of the simulated nodes: what users would run instead of the gateway.

    apt-get install -y nginx-light      # Debian's nginx; /usr/sbin/nginx

`NginxProxy(upstreams, mode)` writes an nginx.conf into a temp dir and runs
`nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'` on 127.0.0.1:<free port>, set up the way one
would put nginx in front of LLM servers: one worker, an `upstream` with `least_conn` (or the
default round robin) and idle keep-alive connections to the nodes, HTTP/1.1 upstream,
`proxy_buffering off` (streamed tokens pass through as they come), long read/send timeouts,
32 MB bodies, `max_fails=0` (a node that answers 503 is not ejected), no access log, every
file (pid, error log, temp paths) inside the temp dir. Stopped by its PID (SIGQUIT, then
SIGKILL) and the dir removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import httpx
import psutil

from sollol_serve.processes import die_with_parent, free_port

NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
Mode = Literal["least_conn", "round_robin"]


def nginx_conf(root: Path, port: int, upstreams: list[str], mode: Mode) -> str:
    servers = "\n".join(f"        server {urlparse(u).netloc} max_fails=0;" for u in upstreams)
    balance = "        least_conn;\n" if mode == "least_conn" else ""  # round robin is nginx's default
    return f"""worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream llm {{
{balance}{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 32m;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_connect_timeout 3s;
            proxy_read_timeout 900s;
            proxy_send_timeout 900s;
        }}
    }}
}}
"""


class NginxProxy:
    """`with NginxProxy(urls, "least_conn") as url:` a started, answering nginx; stopped on exit."""

    def __init__(self, upstreams: list[str], mode: Mode = "least_conn", binary: str = NGINX):
        if mode not in ("least_conn", "round_robin"):
            raise ValueError(f"unknown nginx balancing mode {mode!r}")
        self.upstreams, self.mode, self.binary = upstreams, mode, binary
        self.port = free_port()
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        self.root = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.root.chmod(0o755)  # run as root, nginx's workers are `nobody`: they must reach the temp paths
        conf = self.root / "nginx.conf"
        conf.write_text(nginx_conf(self.root, self.port, self.upstreams, self.mode))
        self.proc = subprocess.Popen([self.binary, "-p", str(self.root), "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                self.stop()
                raise RuntimeError(f"nginx exited at start: {err}")
            try:  # proxied to a node: nginx is up and reaches the upstreams
                if httpx.get(self.url + "/api/version", timeout=1, trust_env=False).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not answer within {timeout} s")

    def stop(self) -> None:
        """SIGQUIT (graceful) to the master, SIGKILL after 5 s; then any worker it left."""
        if self.proc is not None:
            workers = []
            try:
                workers = psutil.Process(self.proc.pid).children()
            except psutil.NoSuchProcess:
                pass
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGQUIT)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for worker in workers:
                try:
                    worker.wait(2)
                except psutil.TimeoutExpired:
                    worker.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
