"""Plain progress lines (stderr not a terminal): a finished task says its last line once, then stays quiet."""

import io
import time

from sinklab.progress import Progress


def test_finished_tasks_stop_printing_in_logs():
    out = io.StringIO()
    with Progress(interval=0.2, file=out) as bar:
        first = bar.add_task("first", total=3)
        for _ in range(3):
            bar.advance(first)
        second = bar.add_task("second", total=2)
        bar.advance(second)
        time.sleep(0.5)  # heartbeats: only the unfinished task speaks
        bar.advance(second)
        bar.update(second, info="ppl 7.8")  # news after the end is still said
    lines = out.getvalue().splitlines()
    first_lines = [x for x in lines if x.startswith("sinklab: first:")]
    assert first_lines[-1].startswith("sinklab: first: 100% (3/3)")
    assert sum("first: 100%" in x for x in lines) == 1  # no heartbeat or exit line repeats it
    assert sum("second:  50%" in x for x in lines) >= 2  # heartbeat while unfinished
    assert lines[-1].startswith("sinklab: second: 100% (2/2)") and lines[-1].endswith("ppl 7.8")
    assert sum("second: 100%" in x for x in lines) == 2  # the final line, then the news
