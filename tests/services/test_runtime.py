"""The one start-up prologue every service main runs."""
import logging
import signal

import pytest

from services.runtime import start_service


@pytest.fixture
def restored():
    """start_service takes over the root logger and the signal handlers: give pytest its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigs = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    root.handlers[:], root.level = handlers, level
    for s, h in sigs.items():
        signal.signal(s, h)


def test_settings_logging_and_signals_in_one_call(restored):
    settings, log = start_service("runner", ["--rank", "2", "--tensor-parallel-size", "3", "--log-level", "debug"])
    assert settings.rank == 2
    assert log.name == "ferry.runner.2"  # each instance tags its lines
    assert logging.getLogger().level == logging.DEBUG
    assert "runner.2[" in logging.getLogger().handlers[0].formatter._fmt
    with pytest.raises(SystemExit) as stop:  # SIGTERM ends the process quietly
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert stop.value.code == 0


@pytest.mark.parametrize("name, argv, tag", [("scheduler", [], "scheduler"), ("detokenizer", [], "detokenizer"),
                                             ("tokenizer", ["--tokenizer-id", "3"], "tokenizer.3"),
                                             ("gateway", ["--gateway-id", "1"], "gateway.1")])
def test_each_service_is_tagged_by_its_instance(restored, name, argv, tag):
    assert start_service(name, argv)[1].name == f"ferry.{tag}"


def test_the_gateway_keeps_its_signals_for_the_event_loop(restored):
    before = signal.getsignal(signal.SIGTERM)
    start_service("gateway", [], signals=False)
    assert signal.getsignal(signal.SIGTERM) is before
