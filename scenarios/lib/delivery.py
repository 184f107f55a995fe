"""Delivery measured by content (rules S7-S9, D1-D3): a paced writer publishes numbered frames
whose whole buffer is a pattern derived from the number, readers of several kinds (each its own
process and opener) receive them, and every reader's figure is judged as a ratio of the frames
the writer published while that reader streamed.

A frame is `pattern(n, size)`: its number, then one 8-byte word derived from the number repeated
over the buffer, then the number again. A reader identifies a frame by its leading number and
calls it torn unless the whole buffer equals the pattern of that number, so a missing,
repeated, out-of-order or half-overwritten frame is seen whatever the module's own sequence
field says.

Every process records CLOCK_MONOTONIC times (one clock for the whole guest): the writer when
each QBUF/write() began and returned, a reader when its stream started (STREAMON returned, its
buffers queued) and when it stopped judging. A frame counts for a reader when its publishing
began after the reader's start and ended before the reader's stop. The window ends a fixed time
after the last reader started streaming (a busy guest may take seconds to start one), so every
reader is judged over the whole window. Readers go on dequeuing for a short drain after their
stop, so that frames published just before it are still received.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import json
import mmap
import os
import random
import select
import signal
import struct
import time
from dataclasses import dataclass, field

from linuxpy.video import raw

from loopqual.guest.programs.kernelwait import describe_wait, kernel_wait

from .v4l2 import CAP, MMAP, OUT, YUYV, ename

MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: neighbouring numbers get unlike words
WIDTH, HEIGHT = 160, 120  # YUYV: 38,400 bytes a frame (readers check every byte, in Python)
DRAIN_S = 1.0  # readers keep dequeuing this long after their stop
STARTUP_S = 20.0  # what a child may take to open, map and start before the window
MAX_STRETCH = 3.0  # a window held open for slow readers lasts at most this many times its length


class Window:
    """When the readers stop judging, shared with forked readers: unknown (infinity) until
    every reader streams, then set by the parent, which may push it on while a judged reader
    has received too few frames to be judged (a slow guest). Each reader counts the frames it
    received in a slot of its own."""

    def __init__(self, slots: int = 0):
        # anonymous and shared: forked children see the parent's stop, the parent their counts
        self._mem = mmap.mmap(-1, 8 * (1 + slots))
        self.set_stop(float("inf"))
        self._started_r, self._started_w = os.pipe()

    def received(self, slot: int, frames: int) -> None:
        """In a reader: it has received `frames` frames so far."""
        struct.pack_into("<q", self._mem, 8 * (1 + slot), frames)

    def frames(self, slot: int) -> int:
        return struct.unpack_from("<q", self._mem, 8 * (1 + slot))[0]

    def hold_open(self, judged: dict[int, Child], min_frames: int, until: float) -> None:
        """In the parent, once the stop is set: while a running reader of `judged` (slot ->
        child) has received fewer than `min_frames` frames, push the stop on a second at a
        time, not past `until`. A reader that has ended (it failed) holds nothing open."""
        while True:
            delay = self.stop() - 0.3 - time.monotonic()  # readers drain DRAIN_S after it
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            short = [i for i, c in judged.items()
                     if self.frames(i) < min_frames and not c.has_ended()]
            if not short or now + 0.3 >= until:
                return
            self.set_stop(min(now + 1.0, until))

    def set_stop(self, at: float) -> None:
        struct.pack_into("<d", self._mem, 0, at)

    def stop(self) -> float:
        return struct.unpack_from("<d", self._mem, 0)[0]

    def started(self) -> None:
        """In a reader: its stream is on (its pid to the parent)."""
        os.write(self._started_w, struct.pack("<i", os.getpid()))

    def await_readers(self, children: list, seconds: float) -> float:
        """In the parent: wait up to STARTUP_S until each child has started or ended (having
        failed), then end the window `seconds` from now. Returns how long that took."""
        t0 = time.monotonic()
        waiting = {c.pid: c for c in children}
        deadline = t0 + STARTUP_S
        while waiting and time.monotonic() < deadline:
            for pid, c in list(waiting.items()):
                if c.has_ended():
                    del waiting[pid]
            if waiting and select.select([self._started_r], [], [], 0.05)[0]:
                # a pipe write of 4 bytes is atomic: whole pids only
                data = os.read(self._started_r, 4 * 64)
                for (pid,) in struct.iter_unpack("<i", data):
                    waiting.pop(pid, None)
        self.set_stop(time.monotonic() + seconds)
        return round(time.monotonic() - t0, 3)

    def close(self) -> None:
        os.close(self._started_r)
        os.close(self._started_w)
        self._mem.close()


def _body(n: int, size: int) -> bytes:
    """The `size` - 16 bytes between a frame's head and tail: a word derived from n, repeated."""
    word = struct.pack("<Q", ((n + 1) * MIX) & 0xFFFFFFFFFFFFFFFF)
    body = size - 16
    return word * (body // 8) + word[:body % 8]


def pattern(n: int, size: int) -> bytes:
    """Frame n of `size` bytes: n (8 bytes), a word derived from n repeated, n again."""
    head = struct.pack("<Q", n)
    return head + _body(n, size) + head


def first_difference(data, size: int) -> dict:
    """Where a torn buffer stops being the frame it claims to be (for the report)."""
    n = struct.unpack("<Q", data[:8])[0]
    want = pattern(n, size)
    got = bytes(data[:size])
    at = next((i for i in range(len(got)) if got[i] != want[i]), len(got))
    return {"claims": n, "differs_at": at, "of": size, "bytes_there": got[at:at + 8].hex()}


def identify(data, size: int) -> tuple[int, bool]:
    """(the frame number the buffer claims, whether the whole buffer is that frame)."""
    head = data[:8]
    n = struct.unpack("<Q", head)[0]
    return n, data[size - 8:size] == head and data[8:size - 8] == _body(n, size)


# -- children --------------------------------------------------------------------------------

class Child:
    """A forked process running fn(*args); its JSON result comes back through a pipe."""

    def __init__(self, name: str, fn, *args):
        self.name = name
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(rfd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(0)
            try:
                res = fn(*args)
            except BaseException as exc:  # everything becomes the child's reported error
                res = {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(res).encode()
            while data:
                data = data[os.write(wfd, data):]
            os._exit(0)
        os.close(wfd)
        self.pid, self.rfd = pid, rfd
        self.result: dict | None = None

    def has_ended(self) -> bool:
        """Whether it has written its result (or died): its pipe is readable or collected."""
        return self.rfd < 0 or bool(select.select([self.rfd], [], [], 0)[0])

    def collect(self, deadline: float) -> dict:
        """The child's result, or an error naming where it waits if it has none by the
        deadline (it is killed then)."""
        chunks = []
        while True:
            ready = select.select([self.rfd], [], [], max(0.0, deadline - time.monotonic()))[0]
            if not ready:
                where = describe_wait(kernel_wait(self.pid))
                self.kill()
                self.result = {"error": f"{self.name}: no result in time ({where})"}
                return self.result
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self.rfd)
        self.rfd = -1
        self._reap(5.0)
        data = b"".join(chunks)
        self.result = json.loads(data) if data else {
            "error": f"{self.name}: died without a result"}
        return self.result

    def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return True
            except ChildProcessError:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL and reap (a child stuck in the kernel may outlive this: C2 judges that)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(5.0)
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1


# -- V4L2 calls (plain fcntl: these loops run for seconds and must stay cheap) ---------------

def _req(ioc) -> int:
    return int(ioc) & 0xFFFFFFFF


REQBUFS, QUERYBUF = _req(raw.IOC.REQBUFS), _req(raw.IOC.QUERYBUF)
QBUF, DQBUF = _req(raw.IOC.QBUF), _req(raw.IOC.DQBUF)
STREAMON, STREAMOFF = _req(raw.IOC.STREAMON), _req(raw.IOC.STREAMOFF)
S_FMT = _req(raw.IOC.S_FMT)


def _ioctl(fd: int, req: int, arg, what: str):
    try:
        fcntl.ioctl(fd, req, arg)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {ename(exc.errno)}") from None
    return arg


def set_format(fd: int, width: int, height: int) -> int:
    f = raw.v4l2_format()
    f.type = OUT
    f.fmt.pix.width, f.fmt.pix.height = width, height
    f.fmt.pix.pixelformat, f.fmt.pix.field = YUYV, 1
    _ioctl(fd, S_FMT, f, f"S_FMT(OUTPUT, {width}x{height} YUYV)")
    return f.fmt.pix.sizeimage


def reqbufs(fd: int, buf_type: int, count: int) -> int:
    r = raw.v4l2_requestbuffers()
    r.type, r.memory, r.count = buf_type, MMAP, count
    _ioctl(fd, REQBUFS, r, f"REQBUFS({'CAPTURE' if buf_type == CAP else 'OUTPUT'}, {count})")
    return r.count


def buffer(buf_type: int, index: int = 0) -> raw.v4l2_buffer:
    b = raw.v4l2_buffer()
    b.type, b.memory, b.index = buf_type, MMAP, index
    return b


def map_buffers(fd: int, buf_type: int, count: int) -> list[mmap.mmap]:
    maps = []
    for i in range(count):
        b = _ioctl(fd, QUERYBUF, buffer(buf_type, i), f"QUERYBUF({i})")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if buf_type == OUT else 0)
        maps.append(mmap.mmap(fd, b.length, mmap.MAP_SHARED, prot, offset=b.m.offset))
    return maps


def streamon(fd: int, buf_type: int) -> None:
    _ioctl(fd, STREAMON, ctypes.c_int(buf_type), "STREAMON")


# -- the writer --------------------------------------------------------------------------------

def run_writer(device: str, how: str, count: int, fps: float, stop_at: float,
               ready_fd: int, stop_fd: int) -> dict:
    """Publish frames 0, 1, ... at `fps` until stop_at or a byte on stop_fd, by QBUF (`how` =
    "qbuf", `count` buffers) or by write(). Writes the frame size (the sizeimage S_FMT gave,
    4 bytes) to ready_fd once frame 0 is out.
    Reports when each publishing call began and returned."""
    fd = os.open(device, os.O_RDWR)
    size = set_format(fd, WIDTH, HEIGHT)
    period = 1.0 / fps
    began, returned = [], []
    waited = 0.0  # seconds it waited for the module to give a buffer back
    maps: list[mmap.mmap] = []
    free: list[int] = []
    if how == "qbuf":
        count = reqbufs(fd, OUT, count)
        maps = map_buffers(fd, OUT, count)
        free = list(range(count))
        streamon(fd, OUT)
    n = 0
    slot = time.monotonic()
    try:
        while True:
            if time.monotonic() >= stop_at or select.select([stop_fd], [], [], 0)[0]:
                break
            if how == "qbuf":
                if not free:
                    b = buffer(OUT)
                    t0 = time.monotonic()
                    select.select([], [fd], [], 2.0)
                    try:
                        fcntl.ioctl(fd, DQBUF, b)
                    except BlockingIOError:
                        continue
                    finally:
                        waited += time.monotonic() - t0
                    free.append(b.index)
                idx = free.pop(0)
                maps[idx][:size] = pattern(n, size)
                b = buffer(OUT, idx)
                b.bytesused = size
                t0 = time.monotonic()
                _ioctl(fd, QBUF, b, f"QBUF(OUTPUT, {idx})")
            else:
                frame = pattern(n, size)
                t0 = time.monotonic()
                os.write(fd, frame)
            t1 = time.monotonic()
            began.append(t0)
            returned.append(t1)
            if n == 0:
                os.write(ready_fd, struct.pack("<I", size))
            n += 1
            # a late writer drops the beat, as a camera does, and never queues two frames
            # within half a period: the module stamps frames as they are queued, and ffmpeg's
            # reader exits on two stamps in the same millisecond (a burst after a guest stall)
            slot = max(slot + period, t1 + period / 2)
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        for m in maps:
            m.close()
        os.close(fd)
    return {"how": how, "count": count if how == "qbuf" else None, "size": size,
            "began": began, "returned": returned, "waited_s": round(waited, 3)}


# -- readers -------------------------------------------------------------------------------------

@dataclass
class Kind:
    """How a reader takes and gives back its buffers.
    hold: buffers it keeps dequeued (None: count - 1); give: the order it gives held buffers back
    once it holds more than `hold`: "oldest" (one, the oldest), "newest-batch" (all of them,
    newest first), "random" (a random number of them, in a random order); initial: "reverse"
    queues its buffers first in the order N-1..0; io: "mmap", "read", "poll-blocking"; lag_periods:
    it sleeps this many frame periods before giving each buffer back; stop_after_s: it stops
    dequeuing (still streaming) this long after its start."""

    name: str
    hold: int | None = 0
    give: str = "oldest"
    initial: str = "order"
    io: str = "mmap"
    lag_periods: float = 0.0
    stop_after_s: float | None = None
    rules: list[str] = field(default_factory=list)


def _dequeue(fd: int, blocking_watchdog: bool, poller) -> raw.v4l2_buffer | None:
    if not poller.poll(500):
        return None
    b = buffer(CAP)
    if blocking_watchdog:
        # P2: POLLIN means a frame is there; DQBUF on a blocking opener must not wait
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        try:
            fcntl.ioctl(fd, DQBUF, b)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return b
    try:
        fcntl.ioctl(fd, DQBUF, b)
    except BlockingIOError:
        return None
    return b


class _PollHang(Exception):
    pass


def run_reader(device: str, kind: Kind, size: int, request: int, fps: float, window: Window,
               slot: int) -> dict:
    """One reader of `kind` until the window's stop (then a drain): every frame it got, with its
    number, whether it was whole, its sequence field and when it was dequeued."""
    rng = random.Random(1000 + slot)
    period = 1.0 / fps
    blocking = kind.io == "poll-blocking"
    fd = os.open(device, os.O_RDWR if blocking else os.O_RDWR | os.O_NONBLOCK)
    got: list[list] = []  # [number, whole, sequence, dequeued at]
    queued: list[float] = []  # when each buffer went (back) into the module's hands
    overwritten = []  # held buffers whose content changed while held
    errors: list[str] = []
    torn_example: dict = {}
    if blocking:
        def on_alarm(signum, frame):
            raise _PollHang()
        signal.signal(signal.SIGALRM, on_alarm)
    if kind.io == "read":
        # the first read() claims `request` buffers (the pinned count) and queues them all;
        # each read() takes the oldest filled one and queues it again
        start = None
        buf = bytearray(size)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        window.started()  # its first read() claims and queues the buffers
        # the stop it went by: one the parent pushes on after this reader left is not its own
        while time.monotonic() < (stop := window.stop()) + DRAIN_S:
            poller.poll(500)
            try:
                n_read = os.readv(fd, [buf])
            except BlockingIOError:
                continue
            now = time.monotonic()
            if start is None:
                start = now
                queued += [now] * request
            queued.append(now)
            n, whole = identify(buf, size) if n_read >= size else (-1, False)
            if not whole and not torn_example:
                torn_example = first_difference(buf, size) if n_read >= size else {
                    "read_returned": n_read, "of": size}
            got.append([n, whole, -1, now])
            window.received(slot, len(got))
        os.close(fd)
        return {"start": start or stop, "stop": stop, "count": None, "got": got,
                "queued": queued, "overwritten": overwritten, "errors": errors,
                "torn_example": torn_example}
    count = reqbufs(fd, CAP, request)
    maps = map_buffers(fd, CAP, count)
    order = list(range(count))
    if kind.initial == "reverse":
        order.reverse()
    for i in order:
        _ioctl(fd, QBUF, buffer(CAP, i), f"QBUF(CAPTURE, {i})")
    streamon(fd, CAP)
    start = time.monotonic()
    window.started()
    queued += [start] * count
    hold = count - 1 if kind.hold is None else min(kind.hold, count - 1)
    held: list[tuple[int, bytes]] = []  # (index, the bytes it held when dequeued)
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def give_back(idx: int, content: bytes) -> None:
        if bytes(maps[idx][:size]) != content:
            overwritten.append(identify(content, size)[0])
        _ioctl(fd, QBUF, buffer(CAP, idx), f"QBUF(CAPTURE, {idx})")
        queued.append(time.monotonic())

    stopped = False
    try:
        while time.monotonic() < (stop := window.stop()) + DRAIN_S:
            if kind.stop_after_s is not None and not stopped and \
                    time.monotonic() - start >= kind.stop_after_s:
                stopped = True
            if stopped and time.monotonic() < stop:
                time.sleep(0.05)  # still streaming, no DQBUF: the device must not wait for it
                continue
            try:
                b = _dequeue(fd, blocking, poller)
            except _PollHang:
                errors.append("poll() said POLLIN but a blocking DQBUF(CAPTURE) waited 2 s "
                              "(P2: a POLLIN without a frame for this reader hangs it)")
                break
            if b is None:
                continue
            data = bytes(maps[b.index][:size])
            n, whole = identify(data, size)
            if not whole and not torn_example:
                torn_example = {**first_difference(data, size), "index": b.index,
                                "bytesused": b.bytesused, "sequence": b.sequence}
            got.append([n, whole, b.sequence, time.monotonic()])
            window.received(slot, len(got))
            if kind.lag_periods:
                time.sleep(kind.lag_periods * period)
            held.append((b.index, data))
            if len(held) <= hold:
                continue
            if kind.give == "oldest":
                back = [held.pop(0)]
            elif kind.give == "newest-batch":
                back, held = held[::-1], []
            else:  # random
                rng.shuffle(held)
                k = rng.randint(1, len(held))
                back, held = held[:k], held[k:]
            for idx, content in back:
                give_back(idx, content)
    finally:
        for idx, content in held:  # still held at the end: unchanged? (S8)
            if bytes(maps[idx][:size]) != content:
                overwritten.append(identify(content, size)[0])
        try:
            fcntl.ioctl(fd, STREAMOFF, ctypes.c_int(CAP))
        except OSError:
            pass
        for m in maps:
            m.close()
        os.close(fd)
    return {"start": start, "stop": stop, "count": count, "got": got, "queued": queued,
            "overwritten": overwritten, "errors": errors, "torn_example": torn_example}


# -- judging -------------------------------------------------------------------------------------

def figures(writer: dict, reader: dict) -> dict:
    """A reader's figures against what the writer published while it streamed.

    published: frames whose publishing began after the reader's start and ended before its
    stop. owed: those of them published while the reader had an empty buffer in the module's
    hands (buffers it queued, less the frames it received that were published before): S7 puts
    such a frame into that buffer. A frame published while the reader had none (it held every
    buffer, or the guest had not yet scheduled it to dequeue) is one it was not keeping up
    for: S7 lets it miss that frame, and it is not counted against the module. received: the
    owed frames it got; ratio = received / owed; kept_up = owed / published.
    Also torn, repeated, out_of_order, overwritten_while_held, sequence_consistent (S7: the
    sequence field minus the frame number stays the same) and max_age_s (from the start of a
    frame's publishing to its dequeuing)."""
    began, returned = writer["began"], writer["returned"]
    window = [n for n, (b, r) in enumerate(zip(began, returned, strict=True))
              if b >= reader["start"] and r <= reader["stop"]]
    seen: set[int] = set()
    repeated = out_of_order = torn = 0
    last = -1
    offsets = set()
    ages = []
    filled = []  # when each frame it received began to be published
    for n, whole, seq, t in reader["got"]:
        if not whole or not 0 <= n < len(began):
            torn += 1
            continue
        filled.append(began[n])
        if n in seen:
            repeated += 1
        elif n < last:
            out_of_order += 1
        seen.add(n)
        last = max(last, n)
        if seq >= 0:
            offsets.add((seq - n) & 0xFFFFFFFF)
        ages.append(t - began[n])
    queued = sorted(reader.get("queued") or [])
    filled.sort()
    owed = [n for n in window
            if bisect.bisect_right(queued, began[n]) - bisect.bisect_left(filled, began[n]) >= 1]
    received = sum(1 for n in owed if n in seen)
    return {"published": len(window), "owed": len(owed), "received": received,
            "ratio": round(received / len(owed), 4) if owed else 0.0,
            "kept_up": round(len(owed) / len(window), 4) if window else 0.0,
            "received_of_published": round(len(seen & set(window)) / len(window), 4)
            if window else 0.0,
            "torn": torn, "repeated": repeated, "out_of_order": out_of_order,
            "overwritten_while_held": len(reader.get("overwritten", [])),
            "sequence_consistent": len(offsets) <= 1 if reader.get("count") else None,
            "frames_got": len(reader["got"]), "buffers": reader.get("count"),
            "max_age_s": round(max(ages), 3) if ages else None,
            **({"first_torn": reader["torn_example"]} if reader.get("torn_example") else {})}


def summary(fig: dict) -> str:
    return (f"{fig['received']}/{fig['owed']} frames owed ({fig['ratio']:.1%}; it kept up for "
            f"{fig['owed']} of the {fig['published']} published), torn "
            f"{fig['torn']}, repeated {fig['repeated']}, out of order {fig['out_of_order']}, "
            f"overwritten while held {fig['overwritten_while_held']}")


def keeps_up_problems(fig: dict, min_ratio: float) -> list[str]:
    """What breaks D1/D2 (and S7/S8) in a keeping-up reader's figures."""
    out = []
    if fig["published"] == 0:
        out.append("no frame was published while it streamed")
    elif fig["ratio"] < min_ratio:
        out.append(f"received {fig['ratio']:.1%} of the frames published while it had a buffer "
                   f"queued for them (D1/D2: at least {min_ratio:.0%})")
    for key, what in (("torn", "torn frames"), ("repeated", "frames received twice"),
                      ("out_of_order", "frames out of order"),
                      ("overwritten_while_held", "buffers overwritten while it held them (S8)")):
        if fig[key]:
            out.append(f"{fig[key]} {what}")
    if fig["sequence_consistent"] is False:
        out.append("the sequence field does not count the writer's frames (S7)")
    return out


def errno_of(exc: OSError) -> str:
    return ename(exc.errno or errno.EIO)


# -- one run: a writer and its readers -------------------------------------------------------

@dataclass
class Run:
    writer: dict
    readers: dict[str, dict]  # kind name -> what the reader reported
    figures: dict[str, dict]  # kind name -> figures(), for readers that reported frames
    readers_started_s: float = 0.0  # from forking the readers until the last one streamed
    window_s: float = 0.0  # from then until the readers stopped (before their drain)

    def writer_longest_gap(self) -> float:
        """The longest time between the starts of two frames' publishing."""
        began = self.writer.get("began") or []
        return round(max((b - a for a, b in zip(began, began[1:], strict=False)), default=0.0), 3)

    def writer_fps(self) -> float:
        began = self.writer.get("began") or []
        if len(began) < 2:
            return 0.0
        return round((len(began) - 1) / (began[-1] - began[0]), 2)


def run(device: str, how: str, kinds: list[Kind], request: int, fps: float,
        seconds: float, judged: list[Kind] | None = None, min_frames: int = 0) -> Run:
    """A writer (`how`: "qbuf" or "write") at `fps`; once its first frame is out, every reader
    of `kinds` at once, each judged until `seconds` after the last of them started streaming,
    or later (up to MAX_STRETCH times as long) while a reader of `judged` has received fewer
    than `min_frames` frames. Errors of the children are in their reports ("error")."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    window = Window(len(kinds))
    # the readers' start (up to STARTUP_S), their window, their drain, then a margin
    limit = 2 * STARTUP_S + MAX_STRETCH * seconds + DRAIN_S + 30
    writer = Child(f"writer ({how})", run_writer, device, how, request, fps,
                   time.monotonic() + limit, ready_w, stop_r)
    os.close(ready_w)
    readers: list[tuple[Kind, Child]] = []
    try:
        ready = os.read(ready_r, 4) if select.select([ready_r], [], [], STARTUP_S)[0] else b""
        if len(ready) != 4:
            os.write(stop_w, b"1")
            w = writer.collect(time.monotonic() + 10)
            return Run({"error": w.get("error") or f"the writer published no frame in "
                                                  f"{STARTUP_S:.0f} s"}, {}, {})
        size = struct.unpack("<I", ready)[0]  # what the writer writes: readers check as much
        for i, kind in enumerate(kinds):
            readers.append((kind, Child(f"reader {kind.name}", run_reader, device, kind, size,
                                        request, fps, window, i)))
        started_s = window.await_readers([child for _kind, child in readers], seconds)
        opened = time.monotonic()
        window.hold_open({i: child for i, (kind, child) in enumerate(readers)
                          if kind in (judged or [])}, min_frames, opened + MAX_STRETCH * seconds)
        window_s = round(window.stop() - opened, 3)
        deadline = window.stop() + DRAIN_S + STARTUP_S
        got = {kind.name: child.collect(deadline) for kind, child in readers}
    finally:
        for _kind, child in readers:
            if child.result is None:
                child.kill()
        os.write(stop_w, b"1")
        w = writer.result or writer.collect(time.monotonic() + 15)
        for fd in (ready_r, stop_r, stop_w):
            os.close(fd)
        window.close()
    figs = {name: figures(w, r) for name, r in got.items()
            if "error" not in r and "error" not in w}
    return Run(w, got, figs, started_s, window_s)


# -- real programs: frames counted by content in what they pass on ---------------------------

def span_figures(frames: list[tuple[int, bool]], warmup: int = 0) -> dict:
    """Figures of the frames a program passed on, in the order it did, as (number, whole):
    received (distinct whole frames), span (from the first frame number it passed to the
    last: the frames published while it ran), ratio = received / span, torn, repeated,
    out_of_order. Needs no clock: the frames' own numbers say what was published meanwhile.
    The first `warmup` frames it passed on are left out: a program still opening its encoders
    holds every buffer it has, and a capture device drops what it cannot queue (S7)."""
    frames = frames[warmup:]
    numbers = [n for n, whole in frames if whole]
    torn = sum(1 for _n, whole in frames if not whole)
    distinct = set(numbers)
    span = max(numbers) - min(numbers) + 1 if numbers else 0
    out_of_order, top = 0, -1
    for n in numbers:
        if n < top:
            out_of_order += 1
        top = max(top, n)
    return {"received": len(distinct), "span": span,
            "ratio": round(len(distinct) / span, 4) if span else 0.0,
            "torn": torn, "repeated": len(numbers) - len(distinct), "out_of_order": out_of_order,
            "first": min(numbers) if numbers else None, "last": max(numbers) if numbers else None,
            "warmup": warmup}


def frames_in_file(path: str, size: int) -> list[tuple[int, bool]]:
    """(number, whole) of each frame of `size` bytes in a raw video file a program wrote."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    return [identify(data[off:off + size], size) for off in range(0, len(data) - size + 1, size)]


def program_problems(fig: dict, min_ratio: float, min_frames: int) -> list[str]:
    """What breaks D4 in a program's figures: fewer than min_ratio of the frames published
    while it ran, fewer than min_frames at all, or any torn, repeated or out-of-order frame."""
    out = []
    if fig["received"] < min_frames:
        out.append(f"it passed on {fig['received']} whole frames, fewer than the {min_frames} "
                   f"needed to judge")
    elif fig["ratio"] < min_ratio:
        out.append(f"it got {fig['received']} of the {fig['span']} frames published from its "
                   f"first to its last ({fig['ratio']:.1%}; D4: at least {min_ratio:.0%})")
    for key in ("torn", "repeated", "out_of_order"):
        if fig[key]:
            out.append(f"{fig[key]} {key.replace('_', ' ')}")
    return out


class Feeder:
    """Writes pattern frames 0, 1, ... of `size` bytes into a program's stdin at `fps`, from a
    thread, until stop() or the program goes (a real writer program fed numbered frames).
    make(n): frame n's bytes instead of the pattern (frames made for a format that converts)."""

    def __init__(self, pipe, size: int, fps: float, make=None):
        import threading

        self.pipe, self.size, self.period = pipe, size, 1.0 / fps
        self.make = make or (lambda n: pattern(n, size))
        self.fed = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        slot = time.monotonic()
        try:
            while not self._stop.is_set():
                self.pipe.write(self.make(self.fed))
                self.pipe.flush()
                self.fed += 1
                slot += self.period
                if slot < time.monotonic():
                    # the program did not take the frame in time (starting up): no burst of
                    # frames to catch up, a camera's pace from here on
                    slot = time.monotonic()
                self._stop.wait(max(0.0, slot - time.monotonic()))
        except (BrokenPipeError, ValueError, OSError) as exc:
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        """Stop feeding and close the pipe. A thread still blocked writing into a program that
        stopped reading (one that crashed and hangs) holds the pipe's lock: closing would wait
        for it forever, so the pipe stays open until the program is gone; call again then."""
        self._stop.set()
        self._t.join(5)
        if self._t.is_alive():
            return
        try:
            self.pipe.close()
        except OSError:
            pass


class PacedWriter:
    """run_writer() in a child process, as a context manager: frames 0, 1, ... published by
    QBUF (or write()) at `fps` until the block ends; .size once the first frame is out."""

    def __init__(self, device: str, fps: float, how: str = "qbuf", count: int = 2):
        self.args = (device, how, count, fps)
        self.size = 0
        self.report: dict = {}

    def __enter__(self) -> PacedWriter:
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        device, how, count, fps = self.args
        self.child = Child(f"writer ({how})", run_writer, device, how, count, fps,
                           time.monotonic() + 3600, ready_w, self._stop_r)
        os.close(ready_w)
        ready = os.read(ready_r, 4) if select.select([ready_r], [], [], STARTUP_S)[0] else b""
        os.close(ready_r)
        if len(ready) != 4:
            self.__exit__(None, None, None)
            raise OSError(errno.EIO, f"the paced writer published no frame in {STARTUP_S:.0f} s: "
                                     f"{self.report.get('error', 'no report')}")
        self.size = struct.unpack("<I", ready)[0]
        return self

    def published(self) -> int:
        return len(self.report.get("began") or [])

    def __exit__(self, *exc) -> None:
        os.write(self._stop_w, b"1")
        self.report = self.child.collect(time.monotonic() + 15)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
