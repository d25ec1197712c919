"""The original SOLLOL's `DashboardClient`: an application registers itself with the gateway's
dashboard (name, router type, version, metadata) and keeps a heartbeat, as its docs show:

    from sollol_serve.dashboard_client import DashboardClient
    client = DashboardClient(app_name="SynapticLlamas", router_type="IntelligentRouter",
                             version="1.0.0", dashboard_url="http://localhost:8000",
                             metadata={"agents": 3}, auto_register=True)
    client.update_metadata({"agents": 5})
    client.close()  # stops the heartbeat and deregisters

Registering is optional: every request is attributed to its application anyway (by key,
`X-SOLLOL-App` or User-Agent). A dashboard that is down never breaks the application: calls
log a warning and return False, and the heartbeat registers again when the gateway forgot it.
"""

from __future__ import annotations

import logging
import threading

import httpx

from sollol_serve import __version__
from sollol_serve.client import SOLLOLConfig

logger = logging.getLogger(__name__)
HEARTBEAT_S = 5.0


class DashboardClient:
    def __init__(self, app_name: str, router_type: str = "OllamaPool", version: str = __version__,
                 dashboard_url: str | None = None, metadata: dict | None = None, auto_register: bool = True,
                 api_key: str | None = None, heartbeat_interval: float = HEARTBEAT_S):
        config = SOLLOLConfig(dashboard_url, api_key).resolved()
        self.app_name, self.router_type, self.version = app_name, router_type, version
        self.metadata = dict(metadata or {})
        self.app_id: str | None = None
        self.interval = heartbeat_interval
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.http = httpx.Client(base_url=config.base_url.rstrip("/"), headers=headers, timeout=10.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None
        self._last_status: int | None = None  # of the last call; None when the gateway was unreachable
        if auto_register:
            self.register()

    def register(self) -> bool:
        """Say who this application is, and start the heartbeat."""
        body = {"app_name": self.app_name, "router_type": self.router_type, "version": self.version,
                "metadata": self.metadata}
        answer = self._send("POST", "/api/applications/register", body)
        if answer is None:
            return False
        self.app_id = answer["app_id"]
        if self._beats is None:
            self._beats = threading.Thread(target=self._beat_forever, name="sollol-dashboard-heartbeat", daemon=True)
            self._beats.start()
        return True

    def heartbeat(self) -> bool:
        """Tell the dashboard this application is alive (with its current metadata)."""
        if self.app_id is None:
            return self.register()
        answer = self._send("POST", f"/api/applications/{self.app_id}/heartbeat", {"metadata": self.metadata},
                            quiet_status=404)
        if answer is None and self._last_status == 404:  # the gateway restarted and forgot it
            return self.register()
        return answer is not None

    def update_metadata(self, metadata: dict) -> bool:
        """Merge `metadata` into what the dashboard shows, now."""
        self.metadata.update(metadata)
        return self.heartbeat()

    def deregister(self) -> bool:
        if self.app_id is None:
            return False
        app_id, self.app_id = self.app_id, None
        return self._send("DELETE", f"/api/applications/{app_id}", None) is not None

    def close(self) -> None:
        """Stop the heartbeat and deregister (the dashboard stops listing this application)."""
        self._stop.set()
        if self._beats is not None:
            self._beats.join(timeout=self.interval + 1)
        self.deregister()
        self.http.close()

    def __enter__(self) -> "DashboardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self.heartbeat()

    def _send(self, method: str, path: str, body: dict | None, quiet_status: int | None = None) -> dict | None:
        with self._lock:  # the heartbeat thread and the application share the connection
            try:
                response = self.http.request(method, path, json=body)
            except httpx.HTTPError as exc:
                logger.warning("SOLLOL dashboard unreachable (%s %s): %s", method, path, exc)
                self._last_status = None
                return None
        self._last_status = response.status_code
        if response.status_code >= 400:
            if response.status_code != quiet_status:
                logger.warning("SOLLOL dashboard refused %s %s: HTTP %s %s", method, path, response.status_code,
                               response.text[:200])
            return None
        return response.json()
