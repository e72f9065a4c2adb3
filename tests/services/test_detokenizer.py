import logging
import random

from services.detokenizer.incremental import IncrementalDecoder, StopChecker
from services.detokenizer.service import Detokenizer, DetokenizerService
from shared.codec import pack_ids
from shared.messages import (
    AbortRequest,
    DetokRegister,
    Heartbeat,
    RequestError,
    RequestOutput,
    SeqDelta,
    TokenBatch,
    WorkerStatus,
)
from shared.output_batch import RequestOutputs

TEXTS = ["The capital of France is Paris.", "héllo wörld — 日本語のテキスト 😀👍🏽 done",
         "  leading spaces\n\nand\ttabs", "naïve café 🇫🇷 flags"]


def test_incremental_matches_full_decode_and_never_splits_characters(tokenizer):
    prompt = tokenizer.encode("<|im_start|>assistant\n")
    for text in TEXTS:
        ids = tokenizer.encode(text)
        dec = IncrementalDecoder(tokenizer, prompt)
        pieces = [dec.push([t]) for t in ids]
        pieces.append(dec.flush())
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
        assert not any("\ufffd" in p for p in pieces)


def test_incremental_with_several_tokens_per_step(tokenizer):
    ids = tokenizer.encode(TEXTS[1])
    rng = random.Random(0)
    dec, out, i = IncrementalDecoder(tokenizer, []), [], 0
    while i < len(ids):
        k = rng.randint(1, 3)
        out.append(dec.push(ids[i:i + k]))
        i += k
    assert "".join(out) + dec.flush() == TEXTS[1]


def test_special_tokens_are_skipped(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    dec = IncrementalDecoder(tokenizer, [])
    text = dec.push(tokenizer.encode("Paris.")) + dec.push([eos]) + dec.flush()
    assert text == "Paris."


def test_stop_string_spanning_pushes_is_never_sent():
    s = StopChecker(["STOP here"])
    assert s.push("abc ST") == ("abc ", False)
    assert s.push("OP h") == ("", False)
    assert s.push("ere and more") == ("", True)


def test_stop_prefix_released_once_ruled_out():
    s = StopChecker(["\n\n", "END"])
    assert s.push("one\n") == ("one", False)
    assert s.push("two E") == ("\ntwo ", False)
    assert s.push("Nx") == ("ENx", False)
    assert s.flush() == ""


def test_stop_included_and_earliest_wins():
    s = StopChecker(["b", "a"], include_stop=True)
    assert s.push("xxab") == ("xxa", True)


def _register(rid, n=1, stop=(), logprobs=None):
    return DetokRegister(rid, 7, n, pack_ids([]), list(stop), False, True, logprobs)


def test_detokenizer_routes_and_applies_stop_strings(tokenizer):
    d = Detokenizer(tokenizer)
    d.register(_register("r1", stop=[" Paris"]))
    ids = tokenizer.encode("The capital is Paris. Yes")
    outs = []
    aborts = []
    for k, t in enumerate(ids):
        o, a = d.on_batch(TokenBatch([SeqDelta("r1", 7, 0, pack_ids([t]), None, [], 5, k + 1, 0)]))
        outs += o
        aborts += a
    text = "".join(c.text for _, o in outs for c in o.choices)
    assert text == "The capital is"
    assert outs[-1][1].choices[-1].finish_reason == "stop"
    assert all(gid == 7 for gid, _ in outs)
    assert aborts == [("r1", -1)]  # the engine did not know: it must stop generating
    assert "r1" not in d.requests


def test_detokenizer_n_choices_and_engine_finish(tokenizer):
    d = Detokenizer(tokenizer)
    d.register(_register("r2", n=2))
    a, b = tokenizer.encode("yes"), tokenizer.encode("no")
    o, ab = d.on_batch(TokenBatch([SeqDelta("r2", 7, 0, pack_ids(a), "length", [], 3, 1, 0),
                                   SeqDelta("r2", 7, 1, pack_ids(b), None, [], 3, 1, 0)]))
    assert [(c.index, c.text, c.finish_reason) for c in o[0][1].choices] == [(0, "yes", "length"), (1, "no", None)]
    assert ab == [] and "r2" in d.requests
    o, ab = d.on_batch(TokenBatch([SeqDelta("r2", 7, 1, pack_ids(a), "stop", [], 3, 2, 0)]))
    assert o[0][1].choices[0].text == "yes" and ab == [] and "r2" not in d.requests
    # outputs for an unknown or finished request are dropped
    assert d.on_batch(TokenBatch([SeqDelta("r2", 7, 0, pack_ids(a), None)])) == ([], [])


def test_detokenizer_stops_one_choice_of_several(tokenizer):
    """n=2: a stop string in choice 0 aborts that choice alone in the engine; choice 1 goes on."""
    d = Detokenizer(tokenizer)
    d.register(_register("r3", n=2, stop=[" Paris"]))
    hit, other = tokenizer.encode("It is Paris"), tokenizer.encode("It is")
    o, ab = d.on_batch(TokenBatch([SeqDelta("r3", 7, 0, pack_ids(hit), None, [], 3, len(hit), 0),
                                   SeqDelta("r3", 7, 1, pack_ids(other), None, [], 3, len(other), 0)]))
    choices = {c.index: c for c in o[0][1].choices}
    assert choices[0].finish_reason == "stop" and choices[0].text == "It is"
    assert choices[1].finish_reason is None
    assert ab == [("r3", 0)] and "r3" in d.requests
    # the engine's late output for the stopped choice is dropped; choice 1 ends by a stop string too: now the
    # whole request is aborted
    o, ab = d.on_batch(TokenBatch([SeqDelta("r3", 7, 0, pack_ids(other), None, [], 3, 9, 0),
                                   SeqDelta("r3", 7, 1, pack_ids(tokenizer.encode(" Paris")), None, [], 3, 9, 0)]))
    assert [c.index for c in o[0][1].choices] == [1] and o[0][1].choices[0].finish_reason == "stop"
    assert ab == [("r3", -1)] and "r3" not in d.requests


# ---------------------------------------------------------------- the service around it, with a fake outbox


class FakeOutbox:
    def __init__(self):
        self.scheduler, self.gateways = [], []

    def to_scheduler(self, msg):
        self.scheduler.append(msg)

    def to_gateway(self, gateway_id, msg):
        self.gateways.append((gateway_id, msg))


def test_service_routes_outputs_aborts_and_errors(tokenizer):
    out = FakeOutbox()
    service = DetokenizerService(tokenizer, out, pid=9)
    service.on_message(_register("r1", stop=[" Paris"]))
    ids = tokenizer.encode("It is Paris")
    service.on_message(TokenBatch([SeqDelta("r1", 7, 0, pack_ids(ids), None, [], 3, len(ids), 0)]))
    [(gid, outputs)] = out.gateways
    assert gid == 7 and isinstance(outputs, RequestOutputs) and outputs.gateway_id == 7
    [output] = outputs.outputs
    assert isinstance(output, RequestOutput) and output.choices[0].text == "It is"
    assert out.scheduler == [AbortRequest("r1", -1, "stop", -1)]  # the engine does not know about the stop string
    service.on_message(_register("r2"))
    err = RequestError("r2", 7, 500, "engine failed", "internal_error")
    service.on_message(err)
    assert out.gateways[-1] == (7, err) and "r2" not in service.detok.requests


def test_service_sends_one_frame_per_gateway_per_step_with_every_request_in_order(tokenizer):
    out = FakeOutbox()
    service = DetokenizerService(tokenizer, out, pid=9)
    routes = {"a": 7, "b": 8, "c": 7, "d": 7}
    for rid, gid in routes.items():
        reg = _register(rid, n=2 if rid == "d" else 1)
        reg.gateway_id = gid
        service.on_message(reg)
    ids = tokenizer.encode(" Paris")
    step = [SeqDelta(rid, routes[rid], i, pack_ids(ids), None, [], 3, len(ids), 0)
            for rid in ("c", "a", "d", "b") for i in range(2 if rid == "d" else 1)]
    service.on_message(TokenBatch(step))
    assert [(gid, type(m)) for gid, m in out.gateways] == [(7, RequestOutputs), (8, RequestOutputs)]
    (_, to7), (_, to8) = out.gateways
    assert to7.gateway_id == 7 and to8.gateway_id == 8
    assert [o.request_id for o in to7.outputs] == ["c", "a", "d"] and [o.request_id for o in to8.outputs] == ["b"]
    assert [c.index for c in to7.outputs[2].choices] == [0, 1]  # a request's choices in its one output
    assert all(c.text == " Paris" for o in to7.outputs + to8.outputs for c in o.choices)
    out.gateways.clear()
    service.on_message(TokenBatch([]))  # a step with nothing for any gateway sends nothing
    assert out.gateways == []


def test_service_drops_a_message_it_cannot_handle_and_lives_on(tokenizer, caplog):
    out = FakeOutbox()
    service = DetokenizerService(tokenizer, out, pid=9)
    bad = _register("r1")
    bad.prompt_tail = b"\x01"  # not whole int32s
    with caplog.at_level(logging.ERROR, "ferry.detokenizer"):
        service.on_message(bad)
    assert "dropped a message that could not be handled: 'DetokRegister'" in caplog.text
    service.on_message(_register("r2"))
    assert list(service.detok.requests) == ["r2"]


def test_service_heartbeat_counts_open_requests(tokenizer):
    out = FakeOutbox()
    service = DetokenizerService(tokenizer, out, pid=9)
    service.on_message(_register("r1"))
    assert service.heartbeat() == Heartbeat("detokenizer", WorkerStatus(0, 9, requests_open=1))
