"""The open-loop load of the routing benchmark: replay seeded jobs or conversations against a
URL (the gateway or nginx, the same client for both) and summarize what came back.

Every replay is bounded: a finite list of jobs, a client timeout per request, and a cap on
the whole replay (anything still running then is cancelled and counted as failed).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from workload import WORDS, Job, arrivals

REQUEST_TIMEOUT_S = 300.0
SideTask = Callable[[float], Awaitable[object]]  # started with the replay's t0 (time.monotonic())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or value != value else round(value, digits)


def request_of(job: Job) -> tuple[str, dict]:
    if job.kind == "embed":
        return "/api/embed", {"model": job.model or "nomic-embed-text", "input": [job.prompt], "priority": job.priority}
    if job.kind == "generate":
        return "/api/generate", {"model": job.model or "llama3.2", "prompt": job.prompt, "stream": False,
                                 "options": {"num_predict": job.num_predict}, "priority": job.priority}
    return "/api/chat", {"model": job.model or "llama3.2", "messages": [{"role": "user", "content": job.prompt}],
                         "stream": job.kind == "chat_stream", "options": {"num_predict": job.num_predict},
                         "priority": job.priority}


def _error_in(line: bytes) -> str | None:
    """The `error` of an NDJSON line (an answer or a stream's last chunk), if it has one."""
    try:
        payload = json.loads(line)
    except ValueError:
        return None
    return payload.get("error") if isinstance(payload, dict) else None


async def send(session: aiohttp.ClientSession, url: str, job: Job, t0: float) -> dict:
    await asyncio.sleep(max(0.0, t0 + job.at - time.monotonic()))
    path, body = request_of(job)
    started = time.monotonic()
    base = {"priority": job.priority, "kind": job.kind, "at": job.at, "app": job.app}
    first, last = None, b""
    try:
        async with session.post(url + path, json=body, headers={"X-SOLLOL-App": job.app} if job.app else None) as response:
            node = response.headers.get("X-SOLLOL-Node")
            if response.status != 200:
                await response.read()
                return {**base, "ok": False, "status": response.status, "node": node}
            async for line in response.content:
                if first is None:
                    first = time.monotonic() - started
                if line.strip():
                    last = line
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return {**base, "ok": False, "status": type(exc).__name__, "node": None}
    latency = time.monotonic() - started
    if _error_in(last):
        return {**base, "ok": False, "status": "error chunk", "node": node}
    return {**base, "ok": True, "latency_s": latency, "ttfc_s": first if job.kind == "chat_stream" else latency,
            "node": node}


async def bounded(coros: list[Awaitable], timeout_s: float) -> list:
    """Results in order; None for whatever had not finished after `timeout_s` (cancelled)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [t.result() if t in done and t.exception() is None else None for t in tasks]


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                 connector=aiohttp.TCPConnector(limit=0))


async def _replay(url: str, jobs: list[Job], side: list[SideTask],
                  drain_cap_s: float) -> tuple[list[dict], float, list]:
    async with _session() as session:
        t0 = time.monotonic()
        side_tasks = [asyncio.ensure_future(task(t0)) for task in side]
        results = await bounded([send(session, url, job, t0) for job in jobs], _cap(jobs, drain_cap_s))
        wall = time.monotonic() - t0
        side_results = await bounded(side_tasks, 30)
    return [r or unfinished(j, wall) for r, j in zip(results, jobs)], wall, side_results


def _cap(items: list, drain_cap_s: float) -> float:
    """A replay ends `drain_cap_s` after its last arrival at the latest."""
    return (items[-1].at if items else 0.0) + min(drain_cap_s, REQUEST_TIMEOUT_S)


def unfinished(job: Job, wall_s: float) -> dict:
    """A request still running when its replay was cut: it took at least `wall_s - job.at`."""
    return {"ok": False, "status": "unfinished", "node": None, "priority": job.priority, "kind": job.kind,
            "at": job.at, "censored_s": max(0.0, wall_s - job.at)}


def replay(url: str, jobs: list[Job], side: list[SideTask] | None = None,
           drain_cap_s: float = REQUEST_TIMEOUT_S) -> tuple[list[dict], float, list]:
    """Send every job at its arrival time; return per-job results, wall seconds and what the
    side tasks (run alongside, e.g. a fault schedule or a poller) returned. Requests still
    running `drain_cap_s` after the last arrival are cancelled and come back `unfinished`."""
    return asyncio.run(_replay(url, jobs, side or [], drain_cap_s))


def summarize(results: list[dict], wall_s: float) -> dict:
    """Latency figures over the answered requests and, as lower bounds, the unfinished ones
    (`censored` > 0: every latency figure is then an "at least")."""
    ok = [r for r in results if r["ok"]]
    censored = [r["censored_s"] for r in results if r.get("status") == "unfinished"]
    lat = [r["latency_s"] for r in ok] + censored
    ttfc = [r["ttfc_s"] for r in ok if r["kind"] == "chat_stream"]
    high = [r["latency_s"] for r in ok if r["priority"] >= 9]
    failures: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            failures[str(r["status"])] = failures.get(str(r["status"]), 0) + 1
    return {
        "requests": len(results), "success": round(len(ok) / len(results), 4) if results else 0.0,
        "failures": failures, "censored": len(censored),
        "mean_s": rounded(statistics.fmean(lat)) if lat else None,
        "p50_s": rounded(percentile(lat, 50)), "p95_s": rounded(percentile(lat, 95)),
        "p99_s": rounded(percentile(lat, 99)),
        "ttfc_p50_s": rounded(percentile(ttfc, 50)), "ttfc_p95_s": rounded(percentile(ttfc, 95)),
        "high_priority_p95_s": rounded(percentile(high, 95)),
        "throughput_rps": rounded(len(ok) / wall_s) if wall_s else None,
    }


def by_header(results: list[dict]) -> dict[str, int]:
    """Answered requests per node as the gateway's X-SOLLOL-Node header names it."""
    nodes: dict[str, int] = {}
    for r in results:
        if r["ok"] and r.get("node"):
            nodes[r["node"]] = nodes.get(r["node"], 0) + 1
    return dict(sorted(nodes.items()))


# -- multi-turn conversations ---------------------------------------------------------------
SYSTEM_PROMPT = ("You are a careful assistant for the operations team of a small compute cluster. Answer "
                 "briefly, cite the node names you are told about, and say when you are not sure. ") * 2


@dataclass(frozen=True)
class Conversation:
    id: int
    at: float
    first: str  # the long first user message
    followups: tuple[str, ...]  # the user messages of turns 2..n
    num_predict: tuple[int, ...]  # per turn


def _text(rng: random.Random, lo_chars: int, hi_chars: int) -> str:
    target = rng.randint(lo_chars, hi_chars)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < target:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def make_conversations(seed: int, rate_per_s: float, duration_s: float, turns: int = 4) -> list[Conversation]:
    """Poisson conversation starts; a 1500-3000 character first message, short follow-ups."""
    rng = random.Random(seed)
    out = []
    for t in arrivals(rng, rate_per_s, duration_s):
        out.append(Conversation(len(out), t, _text(rng, 1500, 3000),
                                tuple(_text(rng, 80, 300) for _ in range(turns - 1)),
                                tuple(rng.randint(48, 96) for _ in range(turns))))
    return out


async def _turn(session: aiohttp.ClientSession, url: str, messages: list[dict], num_predict: int) -> dict:
    body = {"model": "llama3.2", "messages": messages, "stream": True, "options": {"num_predict": num_predict}}
    started = time.monotonic()
    ttft, parts, last = None, [], b""
    try:
        async with session.post(url + "/api/chat", json=body) as response:
            node = response.headers.get("X-SOLLOL-Node")
            if response.status != 200:
                await response.read()
                return {"ok": False, "status": response.status, "node": node}
            async for line in response.content:
                if not line.strip():
                    continue
                last = line
                try:
                    content = (json.loads(line).get("message") or {}).get("content") or ""
                except (ValueError, AttributeError):
                    content = ""
                if content:
                    if ttft is None:
                        ttft = time.monotonic() - started
                    parts.append(content)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return {"ok": False, "status": type(exc).__name__, "node": None}
    if _error_in(last) or ttft is None:
        return {"ok": False, "status": "error chunk" if _error_in(last) else "no content", "node": node}
    return {"ok": True, "ttft_s": ttft, "latency_s": time.monotonic() - started, "node": node,
            "answer": "".join(parts)}


async def converse(session: aiohttp.ClientSession, url: str, conv: Conversation, t0: float) -> list[dict]:
    """The turns one after the other, each with the whole conversation so far; stops at a failure."""
    await asyncio.sleep(max(0.0, t0 + conv.at - time.monotonic()))
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": conv.first}]
    out = []
    for turn, num_predict in enumerate(conv.num_predict, start=1):
        result = await _turn(session, url, messages, num_predict)
        out.append({"conversation": conv.id, "turn": turn, **{k: v for k, v in result.items() if k != "answer"}})
        if not result["ok"] or turn == len(conv.num_predict):
            break
        messages += [{"role": "assistant", "content": result["answer"]},
                     {"role": "user", "content": conv.followups[turn - 1]}]
    return out


async def _replay_conversations(url: str, convs: list[Conversation], drain_cap_s: float) -> tuple[list[dict], float]:
    async with _session() as session:
        t0 = time.monotonic()
        results = await bounded([converse(session, url, c, t0) for c in convs], _cap(convs, drain_cap_s))
        wall = time.monotonic() - t0
    turns = []
    for conv, result in zip(convs, results):
        done = result or []
        turns += done
        # turns not answered (an earlier turn failed, or the replay was cut) count as failed
        status = "not sent" if result is not None else "unfinished"
        turns += [{"conversation": conv.id, "turn": t, "ok": False, "status": status, "node": None}
                  for t in range(len(done) + 1, len(conv.num_predict) + 1)]
    return turns, wall


def replay_conversations(url: str, convs: list[Conversation],
                         drain_cap_s: float = REQUEST_TIMEOUT_S) -> tuple[list[dict], float]:
    """Every conversation from its start time; cut `drain_cap_s` after the last start."""
    return asyncio.run(_replay_conversations(url, convs, drain_cap_s))


def summarize_turns(turns: list[dict]) -> dict:
    ok = [t for t in turns if t["ok"]]
    later = [t["ttft_s"] for t in ok if t["turn"] >= 2]
    every = [t["ttft_s"] for t in ok]
    lat = [t["latency_s"] for t in ok]
    per_turn = {}
    for n in sorted({t["turn"] for t in turns}):
        values = [t["ttft_s"] for t in ok if t["turn"] == n]
        per_turn[str(n)] = {"mean_s": rounded(statistics.fmean(values)) if values else None,
                            "p95_s": rounded(percentile(values, 95))}
    return {
        "turns": len(turns), "success": round(len(ok) / len(turns), 4) if turns else 0.0,
        "ttft_mean_s": rounded(statistics.fmean(every)) if every else None,
        "ttft_p95_s": rounded(percentile(every, 95)),
        "ttft_later_mean_s": rounded(statistics.fmean(later)) if later else None,
        "ttft_later_p95_s": rounded(percentile(later, 95)),
        "latency_mean_s": rounded(statistics.fmean(lat)) if lat else None,
        "ttft_by_turn": per_turn,
    }
