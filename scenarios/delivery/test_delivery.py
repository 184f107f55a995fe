"""Delivery, measured by content (rules S7-S9, D1-D3): every frame to every reader.

A paced writer (by QBUF, or by write()) publishes numbered frames whose whole buffer is a
pattern of the number (lib/delivery.py); readers of the kinds real pipelines are (they re-queue
at once, hold buffers back and give them back oldest first, newest first or in a random order,
queue in another order than 0..N-1, use read(), poll a blocking opener before DQBUF, lag, stop
dequeuing) receive them in processes of their own. Each reader's figure (frames received of the
frames published while it streamed, torn, repeated, out of order, held buffers overwritten) is
recorded as a measurement and judged as a ratio of what the writer published in the same run.

LOOPQUAL_DELIVERY_FPS (default 30) and LOOPQUAL_DELIVERY_SECONDS (default 4) set the writer's
rate and each run's window (suite delivery-debug: a slower rate for the sanitizer kernel). The
window starts once every reader streams and is held open, up to three times as long, until each
judged reader has received enough frames to be judged: a slow guest takes longer, not a verdict.
"""

from __future__ import annotations

import json
import os

import pytest
from lib.common import need_openers
from lib.delivery import Kind, keeps_up_problems, run, summary

from loopqual.guest.programs.infra import InfrastructureProblem

FPS = float(os.environ.get("LOOPQUAL_DELIVERY_FPS", "30"))
SECONDS = float(os.environ.get("LOOPQUAL_DELIVERY_SECONDS", "4"))
MIN_RATIO = 0.99  # D1, D2
# Fewer frames owed than this (published while the reader had a buffer queued for them) and the
# guest was too starved to judge a reader: the scenario is incomplete rather than a verdict.
MIN_OWED = 30
# the window stays open until each judged reader has received this many more than MIN_OWED
# (frames at the window's edges are not owed)
OWED_MARGIN = 10
# D3: a lagging reader sleeps this many frame periods before it gives each buffer back
LAG_PERIODS = 2.5
# D3, S9: a writer that waits for a stopped reader stops publishing for good; a gap longer than
# this between two frames is a stall (a busy TCG guest loses a few hundred ms at times)
WRITER_STALL_S = 1.5

REQUEUE = Kind("re-queues at once")
HOLD_OLDEST = Kind("holds N-1, gives back oldest first", hold=None, give="oldest")
HOLD_NEWEST = Kind("holds N-1, gives back newest first", hold=None, give="newest-batch")
HOLD_RANDOM = Kind("holds N-1, gives back in a random order", hold=None, give="random")
REVERSE = Kind("queues N-1..0 first", initial="reverse")
READ = Kind("read()", io="read")
POLL_BLOCKING = Kind("blocking, poll() before DQBUF", io="poll-blocking")
LAGGING = Kind("lags (sleeps 2.5 frame periods a frame)", lag_periods=LAG_PERIODS)
STOPPED = Kind("stops dequeuing after 1 s, still streaming", stop_after_s=1.0)


def _request(cell) -> int:
    """The writer's REQBUFS(OUTPUT): every buffer the cell allows (the readers get the pinned
    count, A3), at most 8."""
    return min(cell.max_buffers, 8)


def _run(cell, record_property, how: str, kinds: list[Kind], request,
         judged: list[Kind] | None = None):
    """Run the writer and `kinds`; the window is held open (up to MAX_STRETCH times SECONDS)
    while a reader of `judged` (default: all) has received too few frames to be judged."""
    need_openers(cell, 1 + len(kinds))
    r = run(cell.device, how, kinds, _request(cell), FPS, SECONDS,
            judged=kinds if judged is None else judged, min_frames=MIN_OWED + OWED_MARGIN)
    # what the writer and every reader reported, for a look afterwards (results directory)
    keep = os.path.join(cell.work_dir, "delivery", cell.id)
    os.makedirs(keep, exist_ok=True)
    name = request.node.name.replace("[", "-").replace("]", "")
    with open(os.path.join(keep, f"{name}.json"), "w") as f:
        json.dump({"writer": r.writer, "readers": r.readers, "fps": FPS, "seconds": SECONDS,
                   "readers_started_s": r.readers_started_s, "window_s": r.window_s}, f)
    record_property("writer", {"how": how, "target_fps": FPS,
                               "published": len(r.writer.get("began") or []),
                               "fps": r.writer_fps(), "longest_gap_s": r.writer_longest_gap(),
                               "buffers": r.writer.get("count"),
                               "readers_started_s": r.readers_started_s,
                               "window_s": r.window_s})
    if "error" in r.writer:
        pytest.fail(f"the writer ({how}) failed: {r.writer['error']}")
    failed = {name: rep["error"] for name, rep in r.readers.items() if "error" in rep}
    for name, fig in r.figures.items():
        record_property(f"reader {name}", fig)
    assert not failed, ("readers that could not read (a writer by "
                        f"{how} streaming at {FPS:g} fps): "
                        + "; ".join(f"{n}: {e}" for n, e in failed.items()))
    return r


def _judge_keeping_up(r, kinds: list[Kind], what: str) -> None:
    bad = []
    starved = [f"{k.name}: {r.figures[k.name]['owed']} of {r.figures[k.name]['published']}"
               for k in kinds if r.figures[k.name]["owed"] < MIN_OWED]
    if starved:
        raise InfrastructureProblem(
            f"{what}: readers that did not keep up for {MIN_OWED} frames (frames published while "
            f"they had a buffer queued, of those published), too few to judge: "
            f"{'; '.join(starved)}; the writer by {r.writer['how']} made {r.writer_fps()} fps "
            f"of {FPS:g} in a window held open for {r.window_s} s (the readers streamed "
            f"{r.readers_started_s} s after they were started): the guest is too slow or too "
            f"busy for this rate")
    for k in kinds:
        fig = r.figures[k.name]
        problems = keeps_up_problems(fig, MIN_RATIO)
        problems += r.readers[k.name]["errors"]
        if problems:
            bad.append(f"reader that {k.name} ({fig['buffers'] or 'read()'} buffers): "
                       f"{'; '.join(problems)} [{summary(fig)}]")
    assert not bad, (f"{what}, writer by {r.writer['how']} at {r.writer_fps()} fps (target "
                     f"{FPS:g}): " + " | ".join(bad))


@pytest.mark.rules("D1", "S7")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["qbuf", "write"])
def test_d1_one_reader_keeps_up(cell, openers, record_property, request, how):
    """One reader that re-queues each buffer at once gets at least 99% of the frames published
    while it streamed, each once, in order, none torn, and its sequence field counts the
    writer's frames (S7)."""
    r = _run(cell, record_property, how, [REQUEUE], request)
    _judge_keeping_up(r, [REQUEUE], "one reader")


@pytest.mark.rules("D2", "S7", "S8", "S9", "A3")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["qbuf", "write"])
def test_d2_four_readers_hold_buffers_back(cell, openers, record_property, request, how):
    """Four readers at once: one re-queues at once, three hold N-1 of their N buffers and give
    them back oldest first, newest first and in a random order. Each gets at least 99% of the
    frames, once each, in order, none torn, and no buffer a reader holds is written into
    (S8)."""
    kinds = [REQUEUE, HOLD_OLDEST, HOLD_NEWEST, HOLD_RANDOM]
    r = _run(cell, record_property, how, kinds, request)
    _judge_keeping_up(r, kinds, "four readers at once")


@pytest.mark.rules("D2", "S7", "S9", "P2", "W3")
@pytest.mark.timeout(180)
def test_d2_reverse_order_read_and_blocking_poll(cell, openers, record_property, request):
    """Three readers at once under a write() writer: one queues its buffers N-1..0 first, one
    uses read(), one polls a blocking opener before each DQBUF (POLLIN without a frame for it
    would hang it). Each gets at least 99% of the frames, once each, in order, none torn."""
    kinds = [REVERSE, READ, POLL_BLOCKING]
    r = _run(cell, record_property, "write", kinds, request)
    _judge_keeping_up(r, kinds, "three readers at once")


@pytest.mark.rules("D3", "D1", "S9")
@pytest.mark.timeout(180)
def test_d3_lagging_and_stopped_readers_cost_nobody(cell, openers, record_property, request):
    """Beside a reader that lags (2.5 frame periods a frame) and one that stops dequeuing while
    streaming, a reader that keeps up still gets at least 99% of the frames (D1) and the writer
    never stalls (no gap of more than WRITER_STALL_S between two frames). The lagging reader
    gets frames in order, none torn or repeated, and never one older than its own queue can
    explain (its buffers times its lag, plus two frame periods and a second of scheduling
    slack): no backlog of the device's."""
    kinds = [REQUEUE, LAGGING, STOPPED]
    r = _run(cell, record_property, "qbuf", kinds, request, judged=[REQUEUE])
    _judge_keeping_up(r, [REQUEUE], "beside a lagging and a stopped reader")
    lag = r.figures[LAGGING.name]
    n = lag["buffers"] or 1
    bound = n * LAG_PERIODS / FPS + 2 / FPS + 1.0
    problems = [f"{lag[k]} {k.replace('_', ' ')}" for k in ("torn", "repeated", "out_of_order")
                if lag[k]]
    if lag["frames_got"] == 0:
        problems.append("it got no frame")
    elif lag["max_age_s"] is not None and lag["max_age_s"] > bound:
        problems.append(f"a frame {lag['max_age_s']} s old when dequeued, more than its own "
                        f"{n} buffers explain ({bound:.2f} s): frames from a backlog")
    stopped = r.figures[STOPPED.name]
    for k in ("torn", "overwritten_while_held"):
        if stopped[k]:
            problems.append(f"the stopped reader: {stopped[k]} {k.replace('_', ' ')}")
    gap = r.writer_longest_gap()
    assert gap <= WRITER_STALL_S, (
        f"the writer stalled for {gap} s between two frames (its rate {r.writer_fps()} fps of "
        f"{FPS:g}): the lagging and the stopped reader held it back (D3, S9)")
    assert not problems, "D3: " + "; ".join(problems) + f" [lagging: {summary(lag)}]"
