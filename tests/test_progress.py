import io

from unimir.progress import LineProgress, progress_bar


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_line_progress_prints_every_interval_and_when_done():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(100, "generator", unit="step", stream=out, interval=30, clock=clock)
    for _ in range(10):  # 10 steps in 20 s: under one interval, nothing yet
        clock.now += 2
        bar.update(1)
    assert out.getvalue() == ""
    clock.now = 40
    bar.set_postfix(loss="0.512")
    bar.update(10)  # 20 steps at t = 40 s: 0.5 steps/s, 80 left -> 160 s
    assert out.getvalue() == ("generator: 20/100 steps (20%), 0.5 steps/s, 40 s elapsed, about 2 min 40 s left, "
                              "loss=0.512\n")
    clock.now = 50
    bar.update(80)  # 10 s after the last line: no new line until the step ends
    bar.close()
    bar.close()
    assert out.getvalue().splitlines()[-1] == "generator: 100/100 steps (100%), 2.0 steps/s, 50 s elapsed, " \
                                              "loss=0.512 - done"
    assert len(out.getvalue().splitlines()) == 2


def test_short_steps_stay_quiet_and_disabled_is_silent():
    clock, out = Clock(), io.StringIO()
    with LineProgress(5, "encode texts", stream=out, interval=30, clock=clock) as bar:
        bar.update(5)
    assert out.getvalue() == ""
    quiet = io.StringIO()
    with progress_bar(10, "x", enabled=False, stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
    assert isinstance(progress_bar(10, "x", stream=io.StringIO()), LineProgress)  # not a terminal: lines
