"""One ID per request: where it comes from, and that it travels into what the gateway shows
and logs of the request (its way through Serve's replicas is in the integration tests)."""

from __future__ import annotations

import logging

import pytest
from ray.serve import context as serve_context

from sollol_serve.api.request_id import MAX_ID_CHARS, current_request_id
from sollol_serve.app import replica_logging
from sollol_serve.config import GatewayConfig, LoggingSettings
from sollol_serve.observability.activity import decision
from sollol_serve.protocol import NodeError, Ticket
from sollol_serve.routing.dispatch import Attempts, Dispatcher


@pytest.fixture
def in_request():
    """Serve's request context as its proxy sets it for one request (restored after)."""
    before = serve_context._serve_request_context.get()

    def enter(request_id: str) -> None:
        serve_context._serve_request_context.set(serve_context._RequestContext(request_id=request_id))

    yield enter
    serve_context._serve_request_context.set(before)


def test_the_id_is_serves_and_a_long_one_is_cut(in_request):
    assert current_request_id() == ""  # outside a request
    in_request("client-chosen-7")
    assert current_request_id() == "client-chosen-7"
    in_request("x" * 1000)
    assert current_request_id() == "x" * MAX_ID_CHARS


def test_the_routing_shown_and_the_decision_logged_carry_it():
    ticket = Ticket(router_id="r", flight_id=1, node="gpu-1", node_model="m", choice={"node": "gpu-1"})
    routing = Attempts("req-42").routing(ticket)
    assert routing["request_id"] == "req-42" and routing["node"] == "gpu-1"
    assert decision("m", "/api/chat", 200, 0.1, routing, at=1.0)["request_id"] == "req-42"


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_failed_try_is_logged_with_the_request_id():
    dispatch = Dispatcher(router=None, workers=None, failover=GatewayConfig().failover, clock=lambda: 0.0)
    logger, lines = logging.getLogger("ray.serve"), Lines()  # Serve's logger: it does not propagate
    logger.addHandler(lines)
    try:
        dispatch._failed(NodeError("refused", 503), "gpu-1", Attempts("req-43"), others_pending=True)
    finally:
        logger.removeHandler(lines)
    assert lines.lines == ["request req-43: try on node gpu-1 failed (503): refused"]


def test_replica_logging_json_and_access_lines_on_the_hops_only_when_asked():
    default = LoggingSettings()
    assert replica_logging(default, hop=False).enable_access_log  # the Ingress: a line per request
    assert not replica_logging(default, hop=True).enable_access_log  # the hops: none, for their CPU
    every = LoggingSettings(encoding="JSON", level="DEBUG", every_hop=True)
    hop = replica_logging(every, hop=True)
    assert hop.enable_access_log and hop.encoding == "JSON" and hop.log_level == "DEBUG"
    assert GatewayConfig.model_validate({"logging": {"encoding": "JSON"}}).logging.encoding == "JSON"
    with pytest.raises(ValueError):
        GatewayConfig.model_validate({"logging": {"encoding": "XML"}})
