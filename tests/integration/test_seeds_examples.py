"""The original SOLLOL's documented examples, nearly verbatim, against the gateway: only the
import (`sollol` -> `sollol_serve`) and the address differ.

Each snippet's own prints are kept as asserts on what they print.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import requests

from sollol_serve import HybridRouter, OllamaPool, Priority, connect, get_priority_for_role
from sollol_serve import sync_wrapper
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def sollol_env(gateway, monkeypatch):
    """Where the original's zero-config calls find the gateway, and the chat model they use
    (else the gateway's first chat model, which on this test cluster is a deliberately slow one)."""
    monkeypatch.setenv("SOLLOL_URL", gateway.url)
    monkeypatch.setenv("SOLLOL_MODEL", "llama3.2")
    monkeypatch.delenv("SOLLOL_EMBED_MODEL", raising=False)
    monkeypatch.delenv("SOLLOL_API_KEY", raising=False)
    return gateway.url


def test_batch_processing_api(sollol_env):
    """"Batch Processing API": submit with `documents` and `metadata`, poll `progress.percent`
    until `status` is completed, read `results` and `duration_seconds`."""
    url = sollol_env
    documents = [f"Document {i}" for i in range(40)]
    response = requests.post(f"{url}/api/batch/embed", json={
        "model": "nomic-embed-text",
        "documents": documents,
        "metadata": {"source": "knowledge_base"},
    })
    job_id = response.json()["job_id"]
    seen = []
    deadline = time.monotonic() + 60
    while True:
        status = requests.get(f"{url}/api/batch/jobs/{job_id}").json()
        progress = status["progress"]["percent"]
        seen.append(progress)
        if status["status"] == "completed":
            break
        assert time.monotonic() < deadline, f"batch job stuck at {progress}%"
        time.sleep(0.2)
    results = requests.get(f"{url}/api/batch/results/{job_id}").json()
    embeddings = results["results"]
    assert response.status_code == 202 and status["metadata"] == {"source": "knowledge_base"}
    assert seen[-1] == 100.0 and seen == sorted(seen)
    assert len(embeddings) == len(documents) and status["duration_seconds"] > 0
    # In document order: each vector is the one /api/embed gives for that document.
    direct = requests.post(f"{url}/api/embed", json={"model": "nomic-embed-text", "input": documents[7]}).json()
    assert embeddings[7] == direct["embeddings"][0]
    listed = requests.get(f"{url}/api/batch/jobs?limit=1").json()["jobs"]
    assert len(listed) == 1 and listed[0]["job_id"] == job_id  # the newest job


def test_sollol_detection(sollol_env):
    """"SOLLOL Detection": the X-Powered-By header, and /api/health's `service`."""

    def is_sollol(url="http://localhost:11434"):
        response = requests.get(url)
        if response.headers.get("X-Powered-By") == "SOLLOL":
            return True
        response = requests.get(f"{url}/api/health")
        data = response.json()
        if data.get("service") == "SOLLOL":
            return True
        return False

    assert is_sollol(sollol_env)
    health = requests.get(f"{sollol_env}/api/health")
    data = health.json()
    assert health.status_code == 200 and data["service"] == "SOLLOL" and data["version"]
    assert data["nodes"] >= 4 and data["healthy"] >= 1 and data["status"] in ("healthy", "degraded")


def test_dashboard_data_and_page_at_the_originals_addresses(sollol_env):
    requests.post(f"{sollol_env}/api/chat", json={"model": "llama3.2", "stream": False,
                                                  "messages": [{"role": "user", "content": "count me"}]})
    # Each ingress replica sends its counts to the shared book about once a second.
    wait_until(lambda: requests.get(f"{sollol_env}/api/dashboard").json()["total_requests"], 15,
               "/api/dashboard counts the chat")
    data = requests.get(f"{sollol_env}/api/dashboard").json()
    assert data["total_hosts"] >= 4 and data["available_hosts"] >= 1 and data["total_requests"] >= 1
    host = next(h for h in data["hosts"] if h["requests_handled"])
    assert host["latency_ms"] > 0 and 0 <= host["success_rate"] <= 1 and host["host"]
    assert requests.get(f"{sollol_env}/api/stats").json()["nodes"]
    page = requests.get(f"{sollol_env}/dashboard.html")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_async_pool_runs_ten_agents_in_parallel(sollol_env):
    """"Multi-Agent Parallel Execution" (also: `pool = await OllamaPool.auto_configure()`)."""
    pool = OllamaPool.auto_configure()

    async def run_agents():
        tasks = [
            pool.chat(
                model="llama3.2",
                messages=[{"role": "user", "content": f"Agent {i} task"}],
                priority=5
            )
            for i in range(10)
        ]
        return await asyncio.gather(*tasks)

    async def awaited_configure():
        also = await OllamaPool.auto_configure()
        try:
            return await also.chat_async("llama3.2", messages=[{"role": "user", "content": "Hello!"}])
        finally:
            await also.close()

    async def main():
        try:
            return await run_agents(), await awaited_configure(), await pool.get_stats()
        finally:
            await pool.close()

    responses, hello, stats = asyncio.run(main())
    assert len(responses) == 10 and all(r["message"]["content"] for r in responses)
    routing = [r["_sollol_routing"] for r in responses]
    assert {r["task_type"] for r in routing} == {"generation"} and all(r["host"] for r in routing)
    assert len({r["node"] for r in routing}) >= 2  # spread over the cluster, not one node
    assert hello["message"]["content"] and stats["nodes"]


def test_sync_pool_with_priority_and_roles(sollol_env):
    """"Synchronous API" and "Priority-Based Multi-Agent Execution"."""
    pool = sync_wrapper.OllamaPool.auto_configure()
    response = pool.chat(
        model="llama3.2",
        messages=[{"role": "user", "content": "Hello!"}],
        priority=Priority.HIGH,
        timeout=60
    )
    assert response["message"]["content"]
    assert response.get("_sollol_routing", {}).get("host", "unknown") != "unknown"
    assert response["_sollol_routing"]["priority"] == Priority.HIGH == 7
    agents = [{"name": "Researcher", "role": "researcher"}, {"name": "Editor", "role": "editor"},
              {"name": "Summarizer", "role": "summarizer"}]
    for agent in agents:
        priority = get_priority_for_role(agent["role"])
        response = pool.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": f"Task for {agent['name']}"}],
            priority=priority
        )
        assert response["_sollol_routing"]["priority"] == priority
    assert [get_priority_for_role(a["role"]) for a in agents] == [8, 6, 5]
    pool.close()


def test_hybrid_router_route_request(sollol_env):
    """"Model Sharding" (async) and its sync_wrapper form: the gateway picks node or shard group."""
    router = HybridRouter(
        ollama_pool=OllamaPool.auto_configure(),
        enable_distributed=True,
        auto_discover_rpc=True,
        auto_setup_rpc=True,
        num_rpc_backends=3
    )

    async def main():
        try:
            return await router.route_request(
                model="llama3.2",
                messages=[{"role": "user", "content": "Complex coding task"}]
            )
        finally:
            await router.pool.close()

    assert asyncio.run(main())["message"]["content"]
    sync_router = sync_wrapper.HybridRouter(
        ollama_pool=sync_wrapper.OllamaPool.auto_configure(),
        enable_distributed=True,
        auto_setup_rpc=True,
        num_rpc_backends=3
    )
    response = sync_router.route_request(
        model="llama3.2",
        messages=[{"role": "user", "content": "Explain quantum computing"}]
    )
    assert response["message"]["content"] and response["_sollol_routing"]["host"]


def test_connect_chat_embed_and_batch_embed_without_a_model(sollol_env):
    """"Python SDK (One Line)" and "RAG System": no model named anywhere."""
    sollol = connect()
    response = sollol.chat(
        "Explain quantum computing",
        priority=8
    )
    assert response["message"]["content"] and response["model"].startswith("llama3.2")
    assert response["_sollol_routing"]["priority"] == 8
    documents = ["Doc 1", "Doc 2", "Doc 3"]
    embeddings = sollol.batch_embed(documents, batch_size=50)
    # The embedding model is the gateway's first one (SOLLOL_EMBED_MODEL unset).
    query_embedding = sollol.embed(
        "Doc 2",
        priority=9
    )
    assert len(embeddings) == 3 and query_embedding == embeddings[1] and len(query_embedding) > 0

    async def agent_workflow():
        research = await sollol.chat_async("Research quantum computing", priority=6)
        analysis = await sollol.chat_async("Analyze market trends", priority=8)
        return research, analysis

    research, analysis = asyncio.run(agent_workflow())
    assert research["message"]["content"] and analysis["_sollol_routing"]["priority"] == 8
    sollol.close()


def _applications(url: str) -> dict[str, dict]:
    return {a["name"]: a for a in requests.get(f"{url}/api/applications", timeout=10).json()["applications"]}


def test_pools_register_by_name_and_dashboard_clients_by_hand(sollol_env):
    """"Custom Application Names", "Manual/Programmatic Registration" and "Advanced: Custom
    Heartbeat Logic": applications appear in the dashboard under their names, with metadata."""
    import socket

    from sollol_serve.dashboard_client import DashboardClient
    from sollol_serve.sync_wrapper import OllamaPool as SyncPool

    url = sollol_env
    SyncPool.auto_configure(app_name="FlockParser").chat(model="llama3.2", messages=[
        {"role": "user", "content": "flock"}])
    SyncPool.auto_configure().chat(model="llama3.2", messages=[{"role": "user", "content": "unnamed"}])
    wait_until(lambda: {"FlockParser", f"OllamaPool ({socket.gethostname()})"} <= set(_applications(url)), 10,
               "pools listed by name")

    dashboard_client = DashboardClient(
        app_name="CustomApplication",
        router_type="CustomRouter",  # Or "OllamaPool", "HybridRouter", etc.
        version="1.0.0",
        dashboard_url=url,
        metadata={
            # Custom metadata shown in dashboard
            "nodes": 5,
            "distributed": True,
            "custom_field": "value"
        },
        auto_register=True  # Registers immediately
    )
    shown = _applications(url)["CustomApplication"]
    assert shown["registered"]["router_type"] == "CustomRouter" and shown["registered"]["status"] == "active"
    assert shown["registered"]["metadata"] == {"nodes": 5, "distributed": True, "custom_field": "value"}
    dashboard_client.close()  # Stops heartbeat thread
    assert "registered" not in _applications(url).get("CustomApplication", {})

    dashboard_client = DashboardClient(
        app_name="BackgroundWorker",
        router_type="WorkerPool",
        version="2.0.0",
        dashboard_url=url,
        metadata={"worker_count": 10},
        auto_register=False  # Don't register yet
    )
    assert "BackgroundWorker" not in _applications(url)
    assert dashboard_client.register()
    dashboard_client.update_metadata({"worker_count": 15, "status": "processing"})
    assert dashboard_client.heartbeat()
    assert _applications(url)["BackgroundWorker"]["registered"]["metadata"] == {"worker_count": 15,
                                                                               "status": "processing"}
    assert dashboard_client.deregister()
    dashboard_client.close()
    assert "BackgroundWorker" not in _applications(url)


def test_a_dashboard_client_never_breaks_its_application():
    """No gateway listening: every call answers False (a warning logged), none raises."""
    from sollol_serve.dashboard_client import DashboardClient
    from sollol_serve.processes import free_port

    client = DashboardClient(app_name="Offline", dashboard_url=f"http://127.0.0.1:{free_port()}")
    assert client.app_id is None and not client.heartbeat() and not client.update_metadata({"x": 1})
    client.close()
