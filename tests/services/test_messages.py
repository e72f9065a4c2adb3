"""The typed stats, heartbeat and error messages survive the codec, nested messages included; every error body
comes from FerryError."""
import msgpack
import pytest

from shared.codec import DecodeError, decode, encode
from shared.errors import EngineFailure, FerryError, HTTPError, InvalidParameter, NotReady, PromptTooLong
from shared.messages import EngineStats, Heartbeat, RequestError, SchedulerCounters, WorkerStatus


def roundtrip(msg):
    return decode(encode(msg), expect=type(msg))


def test_engine_stats_with_nested_counters_and_workers():
    stats = EngineStats(True, "", SchedulerCounters(num_running=3, num_waiting=1, num_free_blocks=90,
                                                    num_total_blocks=128, prefix_hit_tokens=64),
                        [WorkerStatus(0, 101, requests_handled=7, errors=1), WorkerStatus(3, 104)], 12.5,
                        max_model_len=4096, num_active_requests=4, steps_in_flight=2)
    back = roundtrip(stats)
    assert back == stats
    assert isinstance(back.engine, SchedulerCounters) and all(isinstance(w, WorkerStatus) for w in back.tokenizers)
    down = EngineStats(False, "waiting for the runners", None, [], 1.0, 4096)
    assert roundtrip(down) == down and roundtrip(down).engine is None


def test_heartbeat_carries_the_pid_once():
    beat = Heartbeat("tokenizer", WorkerStatus(2, 4242, requests_handled=10, errors=3))
    assert roundtrip(beat) == beat
    assert msgpack.unpackb(encode(beat)) == [43, "tokenizer", [56, 2, 4242, 10, 3, 0]]  # the pid once, nested


def test_a_wrong_nested_message_is_a_decode_error():
    wire = msgpack.unpackb(encode(Heartbeat("detokenizer", WorkerStatus(0, 1))))
    wire[2] = msgpack.unpackb(encode(SchedulerCounters()))  # a valid message, of the wrong type for the field
    with pytest.raises(DecodeError, match="Heartbeat.worker"):
        decode(msgpack.packb(wire))
    wire[2] = [56, "zero", 1]  # WorkerStatus with a string id
    with pytest.raises(DecodeError, match="WorkerStatus.id"):
        decode(msgpack.packb(wire))


@pytest.mark.parametrize("err,status,type_,code", [
    (PromptTooLong("too long", param="max_tokens"), 400, "invalid_request_error", "context_length_exceeded"),
    (InvalidParameter("bad", param="n"), 400, "invalid_request_error", None),
    (NotReady("the engine is not ready: x", code="not_ready"), 503, "service_unavailable", "not_ready"),
    (EngineFailure("the engine failed: boom"), 503, "service_unavailable", "engine_failure"),
    (FerryError("internal error: oops"), 500, "internal_error", None),
    (HTTPError(413, "too big", code="body_too_large"), 413, "invalid_request_error", "body_too_large"),
])
def test_an_error_crosses_the_wire_and_comes_back_the_same(err, status, type_, code):
    assert err.to_dict() == {"error": {"message": err.message, "type": type_, "param": err.param, "code": code}}
    msg = roundtrip(RequestError.of("r1", 2, err))
    assert (msg.request_id, msg.gateway_id, msg.status) == ("r1", 2, status)
    again = msg.to_exception()
    assert again.status == status and again.to_dict() == err.to_dict()


def test_a_forged_status_falls_back_to_500():
    forged = RequestError("r", 0, 200, "fine?", "")
    assert forged.to_exception().status == 500 and forged.to_exception().type == "service_unavailable"
