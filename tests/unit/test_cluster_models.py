"""Cluster model management without Ray: choosing the nodes, merging their progress into one
Ollama stream, and the fan-out over fake workers (what it asks each, when the router re-syncs)."""

from __future__ import annotations

import asyncio

import pytest

from sollol_serve.protocol import (
    BadRequest,
    ModelNotFound,
    NodeError,
    NodeStatus,
    NoNodeAvailable,
    NotFound,
)
from sollol_serve.routing.cluster_models import (
    NO_MANAGEMENT,
    Tally,
    holders,
    merge,
    one_node,
    pull_targets,
)
from sollol_serve.routing.model_fanout import ModelFanout


def node(name: str, kind: str | None = "ollama", healthy: bool = True, models: tuple[str, ...] = ()) -> NodeStatus:
    return NodeStatus(name=name, healthy=healthy, slots=1, in_flight=0, kind=kind, models=list(models),
                      error=None if healthy else "cannot reach node")


CLUSTER = [node("b", models=("llama3.2:latest",)), node("a", models=("llama3.2:latest", "phi4:latest")),
           node("cpp", kind="openai", models=("tiny",)), node("down", healthy=False, models=("phi4:latest",)),
           node("shard:big", kind="openai", models=("big",))]


# -- choosing nodes ----------------------------------------------------------------------
def test_a_pull_goes_to_every_ollama_node_and_skips_the_rest_with_a_reason():
    targets = pull_targets(CLUSTER, "qwen3")
    assert targets.nodes == {"b": "qwen3", "a": "qwen3"}
    assert targets.skipped["cpp"] == NO_MANAGEMENT
    assert targets.skipped["down"].startswith("node is down")
    assert "shard:big" not in targets.skipped  # a shard group is not a machine with a model store


def test_a_pull_to_named_nodes():
    assert pull_targets(CLUSTER, "qwen3", ["a", "cpp", "a"]).nodes == {"a": "qwen3"}
    with pytest.raises(NotFound, match="node 'nope' not found"):
        pull_targets(CLUSTER, "qwen3", ["a", "nope"])
    with pytest.raises(NoNodeAvailable, match="cpp"):
        pull_targets(CLUSTER, "qwen3", ["cpp"])


def test_holders_use_each_nodes_own_name_for_the_model():
    targets = holders(CLUSTER, "llama3.2")
    assert targets.nodes == {"b": "llama3.2:latest", "a": "llama3.2:latest"}
    phi = holders(CLUSTER, "phi4:latest")
    assert phi.nodes == {"a": "phi4:latest"} and "down" in phi.skipped


def test_no_holder_is_ollamas_404_and_only_unreachable_holders_a_503():
    with pytest.raises(ModelNotFound, match="model 'nope' not found"):
        holders(CLUSTER, "nope")
    with pytest.raises(NoNodeAvailable, match="down"):
        holders(CLUSTER, "phi4", ["down"])


def test_one_node_is_the_one_named_or_the_first_healthy_ollama_node_by_name():
    assert one_node(CLUSTER, None) == "a"
    assert one_node(CLUSTER, "b") == "b"
    with pytest.raises(BadRequest, match="llama-server"):
        one_node(CLUSTER, "cpp")
    with pytest.raises(NotFound):
        one_node(CLUSTER, "nope")
    with pytest.raises(NoNodeAvailable):
        one_node([node("cpp", kind="openai")], None)


# -- the stream ----------------------------------------------------------------------------
def test_tally_names_every_line_and_sums_up_success():
    tally = Tally("pull", "qwen3", ["a", "b"], {"cpp": NO_MANAGEMENT})
    assert tally.line("a", {"status": "pulling manifest"}) == {"status": "pulling manifest", "node": "a"}
    tally.line("a", {"status": "success"})
    tally.line("b", {"status": "success"})
    assert tally.summary() == {"status": "success", "model": "qwen3", "nodes": ["a", "b"], "skipped": ["cpp"]}


def test_tally_reports_a_failed_node_and_one_that_never_finished():
    tally = Tally("pull", "qwen3", ["a", "b", "c"])
    tally.line("a", {"status": "success"})
    line = tally.line("b", NodeError("cannot reach node b: ClientConnectorError", 503))
    assert line == {"status": "failed: cannot reach node b: ClientConnectorError", "node": "b"}
    tally.line("c", {"status": "pulling manifest"})
    summary = tally.summary()
    assert summary["failed"] == ["b", "c"] and summary["nodes"] == ["a"]
    assert summary["error"].startswith("pull of 'qwen3' failed on 2 node(s): b: cannot reach node b")
    assert "c: its stream ended before success" in summary["error"] and "succeeded on a" in summary["error"]


async def _items(*items, fail: Exception | None = None, gate: asyncio.Event | None = None):
    for item in items:
        if gate is not None:
            await gate.wait()
        yield item
    if fail is not None:
        raise fail


def test_merge_interleaves_streams_as_they_come_and_ends_when_all_end():
    async def go():
        gate = asyncio.Event()
        slow = _items({"n": 1}, {"n": 2}, gate=gate)

        async def fast():
            yield {"n": "x"}
            gate.set()  # the slow stream moves only after the fast one has spoken

        return [pair async for pair in merge({"slow": slow, "fast": fast()})]

    got = asyncio.run(go())
    assert got[0] == ("fast", {"n": "x"})
    assert [item for name, item in got if name == "slow"] == [{"n": 1}, {"n": 2}]


def test_merge_gives_a_failing_streams_exception_last_and_goes_on_with_the_others():
    async def go():
        boom = NodeError("node b broke", 502)
        return [pair async for pair in merge({"a": _items({"s": 1}, {"s": 2}), "b": _items({"s": 0}, fail=boom)})]

    got = asyncio.run(go())
    assert [item for name, item in got if name == "a"] == [{"s": 1}, {"s": 2}]
    b = [item for name, item in got if name == "b"]
    assert b[0] == {"s": 0} and isinstance(b[1], NodeError) and len(b) == 2


def test_closing_merge_early_closes_every_stream():
    closed = []

    async def endless(name):
        try:
            while True:
                yield {"from": name}
                await asyncio.sleep(0)
        finally:
            closed.append(name)

    async def go():
        merged = merge({"a": endless("a"), "b": endless("b")})
        await anext(merged)
        await merged.aclose()

    asyncio.run(go())
    assert sorted(closed) == ["a", "b"]


# -- the fan-out over fake workers ----------------------------------------------------------
class FakeStream:
    def __init__(self, events, fail=None):
        self.source = _items(*events, fail=fail)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await anext(self.source)

    def cancel(self):
        self.cancelled = True


class FakeWorker:
    runtime = False

    def __init__(self, name, log, fail=None):
        self.name, self.log, self.fail = name, log, fail

    def stream(self, method, op, body):
        self.log.append((self.name, method, op, body))
        return FakeStream([{"status": "pulling manifest"}, {"status": "success"}], self.fail)

    async def ask(self, method, *args):
        self.log.append((self.name, method, *args))
        if self.fail is not None:
            raise self.fail
        return 201 if method == "blob" else None


class FakeInventory:
    def __init__(self, nodes, log):
        self._nodes, self.log = nodes, log

    async def nodes(self):
        return self._nodes

    async def refresh(self):
        self.log.append(("router", "refresh"))


class FakeWorkers:
    def __init__(self, workers):
        self.workers = workers

    async def find(self, name):
        return self.workers.get(name)


def fanout(failing: dict[str, Exception] | None = None):
    log: list = []
    failing = failing or {}
    workers = FakeWorkers({n.name: FakeWorker(n.name, log, failing.get(n.name)) for n in CLUSTER})
    return ModelFanout(workers, FakeInventory(CLUSTER, log)), log


def test_a_pull_asks_each_ollama_node_and_refreshes_the_router_before_its_last_line():
    models, log = fanout()

    async def go():
        targets = await models.plan_pull("qwen3", None)
        return [line async for line in models.pull({"model": "qwen3", "insecure": True}, "qwen3", targets)]

    lines = asyncio.run(go())
    assert {(n, m, op, body["model"], body["insecure"]) for n, m, op, body in log[:2]} == {
        ("a", "manage_stream", "pull", "qwen3", True), ("b", "manage_stream", "pull", "qwen3", True)}
    assert log[-1] == ("router", "refresh")
    assert lines[0]["node"] in ("cpp", "down") and lines[0]["status"].startswith("skipped: ")
    assert all("node" in line for line in lines[:-1])
    assert lines[-1]["status"] == "success" and sorted(lines[-1]["nodes"]) == ["a", "b"]


def test_a_pull_with_a_failing_node_ends_in_an_error_that_names_it():
    models, _ = fanout({"b": NodeError("cannot reach node b", 503)})

    async def go():
        targets = await models.plan_pull("qwen3", None)
        return [line async for line in models.pull({"model": "qwen3"}, "qwen3", targets)]

    lines = asyncio.run(go())
    assert {"status": "failed: cannot reach node b", "node": "b"} in lines
    assert "b: cannot reach node b" in lines[-1]["error"] and lines[-1]["nodes"] == ["a"]


def test_delete_goes_to_every_holder_under_its_own_name():
    models, log = fanout()
    summary = asyncio.run(models.change("delete", "llama3.2", lambda name: {"model": name}, None))
    assert sorted(entry for entry in log if entry[0] != "router") == [
        ("a", "manage", "delete", {"model": "llama3.2:latest"}), ("b", "manage", "delete", {"model": "llama3.2:latest"})]
    assert summary["status"] == "success" and sorted(summary["nodes"]) == ["a", "b"]
    assert log[-1] == ("router", "refresh")


def test_a_change_every_node_refuses_alike_keeps_the_nodes_status():
    refusal = NodeError("invalid destination name", 400, retryable=False)
    models, _ = fanout({"a": refusal, "b": refusal})
    with pytest.raises(NodeError) as caught:
        asyncio.run(models.change("copy", "llama3.2", lambda name: {"source": name, "destination": "?"}, None))
    assert caught.value.status == 400 and "a: invalid destination name" in caught.value.message


def test_a_partly_failed_change_is_a_502_that_says_what_was_done():
    models, _ = fanout({"a": NodeError("disk full", 500)})
    with pytest.raises(NodeError) as caught:
        asyncio.run(models.change("delete", "llama3.2", lambda name: {"model": name}, None))
    assert caught.value.status == 502 and "succeeded on b" in caught.value.message


def test_create_goes_to_one_node_and_names_it_on_each_line():
    models, log = fanout()

    async def go():
        node = await models.choose(None)
        return [line async for line in models.single("create", node, {"model": "mine", "from": "llama3.2"})]

    lines = asyncio.run(go())
    assert [line["node"] for line in lines] == ["a", "a"] and lines[-1]["status"] == "success"
    assert ("router", "refresh") in log


def test_a_failed_create_ends_in_an_ollama_error_line():
    models, _ = fanout({"a": NodeError("model 'x' not found", 404)})

    async def go():
        return [line async for line in models.single("create", "a", {"model": "mine", "from": "x"})]

    lines = asyncio.run(go())
    assert lines[-1] == {"error": "create failed on a: model 'x' not found", "node": "a"}
