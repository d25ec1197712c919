"""The live dashboard in a real browser (Debian's headless Chromium): after traffic it shows
every node and the routing decisions, with no console errors."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import httpx
import pytest

from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Tables(HTMLParser):
    """Cell texts of each table row, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id")
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_dashboard_renders_nodes_and_decisions_without_console_errors(gateway):
    for i in range(3):
        r = httpx.post(gateway.url + "/api/chat", timeout=30, json={
            "model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": f"dash {i}"}],
            "options": {"num_predict": 3}})
        assert r.status_code == 200
    wait_until(lambda: httpx.get(gateway.url + "/api/routing/decisions", timeout=10).json()["decisions"], 10,
               "decisions recorded")
    run = _chromium("--dump-dom", gateway.url + "/dashboard")
    assert run.returncode == 0, run.stderr[-2000:]
    tables = Tables()
    tables.feed(run.stdout)
    nodes = {row[0] for row in tables.rows.get("nodes", [])}
    assert nodes >= set(gateway.nodes), (nodes, run.stdout[-1500:])
    decisions = tables.rows.get("decisions", [])
    assert decisions and any(row[1] == "llama3.2" and row[2] in gateway.nodes for row in decisions), decisions
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "rror" in line], console
