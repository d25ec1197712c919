"""Retake docs/dashboard.png: `sollol demo` on free ports, a minute of mixed traffic from two
applications (some of it queued, on the demo's simulated nodes), then the dashboard in
Debian's headless Chromium (Playwright), full page at 1280 px.

    python docs/screenshot_dashboard.py [--out docs/dashboard.png] [--traffic-s 60]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from sollol_serve.processes import free_port

APPS = ("notes-app", "agent-swarm")


def start_demo(port: int, node_port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sollol_serve.cli", "demo", "--port", str(port),
                             "--node-port", str(node_port), "--duration", "900"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "Ctrl-C stops everything" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the demo did not start")


def one_request(url: str, rng: random.Random) -> None:
    app = {"X-SOLLOL-App": rng.choice(APPS)}
    if rng.random() < 0.2:
        httpx.post(url + "/api/embed", headers=app, timeout=120,
                   json={"model": "nomic-embed-text", "input": f"text {rng.random()}"})
        return
    httpx.post(url + "/api/chat", headers=app, timeout=120, json={
        "model": "llama3.2", "stream": False, "priority": rng.randint(1, 10),
        "messages": [{"role": "user", "content": f"question {rng.random()}"}],
        "options": {"num_predict": rng.randint(10, 60)}})


def traffic(url: str, seconds: float) -> None:
    """Bounded: at most 6 in flight, for `seconds`."""
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(6) as pool:
        futures = []
        while time.monotonic() < deadline:
            futures.append(pool.submit(one_request, url, random.Random(rng.random())))
            time.sleep(rng.expovariate(3.0))
        for future in futures:
            future.exception()


def screenshot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/dashboard")
        page.wait_for_function("window.sollolDashboard && window.sollolDashboard.refreshes > 1", timeout=30_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("dashboard.png"))
    parser.add_argument("--traffic-s", type=float, default=60.0)
    args = parser.parse_args()
    port = free_port()
    demo = start_demo(port, free_port())
    url = f"http://127.0.0.1:{port}"
    try:
        traffic(url, args.traffic_s)
        screenshot(url, args.out)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
