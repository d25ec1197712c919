"""Retake docs/trace.png: one chat that fails over (its first node answers 500s), traced from
Serve's proxy to each try on a node, as Arize Phoenix shows it. The gateway runs as
`serve run serve_config.yaml` with tracing turned on, over two simulated nodes; Phoenix on
loopback (tests/trace_backend.py); the page in Debian's headless Chromium (Playwright).

    python docs/screenshot_trace.py [--out docs/trace.png]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.trace_backend

from sollol_serve.sim.process import SimProcess  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.trace_backend import FAILOVER_SIMS, failover_chat, phoenix, spans_of, traced_gateway  # noqa: E402


def screenshot(page_url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1250})
        page.goto(page_url)
        failed_try = page.get_by_text("sollol.attempt").first  # the try on the node that failed
        failed_try.wait_for(timeout=60_000)
        failed_try.click()  # its attributes beside the tree
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("trace.png"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sollol-trace-"))
    sims = {name: SimProcess(name, sim_args).start() for name, sim_args in FAILOVER_SIMS.items()}
    try:
        with phoenix(workdir) as backend, traced_gateway(workdir, sims, backend) as url:
            trace_id = failover_chat(url, sims)[1].split("-")[1]
            wait_until(lambda: sum(s["name"] == "sollol.attempt" for s in spans_of(backend)
                                   if s["context"]["trace_id"] == trace_id) >= 2, 60, "the trace in Phoenix")
            project = httpx.get(backend + "/v1/projects", timeout=10).json()["data"][0]["id"]
            screenshot(f"{backend}/projects/{project}/traces/{trace_id}", args.out)
    finally:
        for sim in sims.values():
            sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
