"""The tokenizer worker's request/ack/error mapping with a fake prompt builder and outbox: no sockets, no model."""
import logging

from services.tokenizer.service import LOAD_REPORT_INTERVAL, TokenizerService
from shared.errors import PromptTooLong
from shared.messages import EngineRequest, Heartbeat, RequestError, Tokenized, TokenizeRequest, WorkerStatus
from shared.sampling_params import SamplingParams


class FakeBuilder:
    """PromptBuilder.prepare: 'long' is over the context, 'bad' breaks the template, anything else tokenizes."""

    def prepare(self, req):
        if req.prompt == "long":
            raise PromptTooLong("too many tokens")
        if req.prompt == "bad":
            raise KeyError("no such template variable")
        return EngineRequest(req.request_id, req.gateway_id, b"\x01\x00\x00\x00", req.params, 1.0)


class FakeOutbox:
    def __init__(self):
        self.scheduler, self.gateways = [], []

    def to_scheduler(self, msg):
        self.scheduler.append(msg)

    def to_gateway(self, gateway_id, msg):
        self.gateways.append((gateway_id, msg))


def make():
    out = FakeOutbox()
    return TokenizerService(FakeBuilder(), out, worker_id=2, pid=77), out


def request(rid, prompt, gateway_id=5):
    return TokenizeRequest(rid, gateway_id, SamplingParams(), prompt=prompt)


def test_a_tokenized_request_goes_to_the_scheduler_and_is_acked_to_its_gateway():
    service, out = make()
    service.on_request(request("r1", "hello"))
    assert [type(m) for m in out.scheduler] == [EngineRequest] and out.scheduler[0].request_id == "r1"
    assert out.gateways == [(5, Tokenized("r1", 5))]  # the gateway no longer counts it against this worker


def test_a_ferry_error_becomes_its_own_request_error():
    service, out = make()
    service.on_request(request("r2", "long", gateway_id=3))
    assert out.scheduler == []
    assert out.gateways == [(3, RequestError.of("r2", 3, PromptTooLong("too many tokens")))]
    assert out.gateways[0][1].code == "context_length_exceeded"


def test_any_other_failure_is_a_400_and_the_worker_lives_on(caplog):
    service, out = make()
    with caplog.at_level(logging.ERROR, "ferry.tokenizer.2"):
        service.on_request(request("r3", "bad"))
    assert "tokenizing r3 failed" in caplog.text
    [(gid, err)] = out.gateways
    assert gid == 5 and isinstance(err, RequestError) and err.status == 400
    assert err.type == "invalid_request_error"
    assert err.message.startswith("could not tokenize the request: ")
    service.on_request(request("r4", "fine"))  # the next request is served as usual
    assert out.gateways[-1] == (5, Tokenized("r4", 5))


def test_heartbeats_count_handled_and_rejected_requests():
    service, out = make()
    service.on_request(request("a", "hello"))
    service.on_request(request("b", "long"))
    assert service.heartbeat() == Heartbeat("tokenizer", WorkerStatus(2, 77, requests_handled=2, errors=1))
    service.tick(now=10.0)
    assert not any(isinstance(m, Heartbeat) for m in out.scheduler)  # beats leave from their own thread


def test_the_load_line_is_logged_only_with_traffic_and_at_most_every_interval(caplog):
    service, _ = make()
    with caplog.at_level(logging.INFO, "ferry.tokenizer.2"):
        service.tick(now=100.0)
        assert "load:" not in caplog.text  # nothing handled yet
        service.on_request(request("a", "hello"))
        service.tick(now=101.0)
        service.tick(now=101.0 + LOAD_REPORT_INTERVAL / 2)
        service.tick(now=101.0 + LOAD_REPORT_INTERVAL)
    assert caplog.text.count("load: 1 requests handled, 0 rejected") == 2
