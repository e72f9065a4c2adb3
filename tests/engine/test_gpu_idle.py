"""The idle meter's arithmetic, with stand-in events (elapsed_time in ms, as CUDA events give it)."""
from engine.gpu_idle import GpuIdleMeter


class Ev:
    def __init__(self, t):
        self.t = t

    def elapsed_time(self, later):
        return later.t - self.t


def test_gaps_between_steps_and_runs_split_at_pauses():
    meter = GpuIdleMeter(pause_ms=50.0, min_steps=3)
    ended = [meter.step_done(Ev(s), Ev(s + 9.0)) for s in (0.0, 10.0, 20.0, 29.0)]  # gaps 1, 1, 0 ms
    assert ended == [None] * 4
    run = meter.run
    assert run.steps == 4 and run.busy_ms == 36.0 and run.idle_ms == 2.0 and run.max_gap_ms == 1.0
    assert abs(run.idle_fraction - 2.0 / 38.0) < 1e-12
    ended = meter.step_done(Ev(200.0), Ev(209.0))  # a pause: the server had nothing to do
    assert ended is run and meter.run.steps == 1 and meter.run.idle_ms == 0.0
    assert "idle 5.3% between steps" in str(run)
    for s in (220.0, 500.0):  # a run shorter than min_steps is not reported
        short = meter.step_done(Ev(s), Ev(s + 1.0))
    assert short is None
