"""Openers in separate processes: a forked worker holds its own Device and runs commands
sent over a pipe. Every reply is awaited with a timeout, so a module that hangs turns into
a `Hang` failure with a clear message instead of a stuck scenario.
"""

from __future__ import annotations

import errno
import os
import pickle
import platform
import select
import signal
import struct
import threading
import time
import traceback

from loopqual.guest.programs.kernelwait import SYSCALLS, describe_wait, in_module, kernel_wait

from .v4l2 import CAP, OUT, YUYV, Device, V4L2Error, frame_number

ALL_WORKERS: list[Worker] = []


class Hang(AssertionError):
    """A call did not return in time: the module (or the client) hangs."""


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj)
    os.write(fd, struct.pack("<I", len(data)) + data)


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = b""
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                raise TimeoutError
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(fd: int, timeout: float | None):
    deadline = None if timeout is None else time.monotonic() + timeout
    (n,) = struct.unpack("<I", _recv_exact(fd, 4, deadline))
    return pickle.loads(_recv_exact(fd, n, deadline))


class _Pump:
    """Writer or reader loop in a thread of the worker process."""

    def __init__(self, dev: Device, role: str, mode: str, size: int, fps: float, count: int,
                 first: int = 0):
        self.dev, self.role, self.mode, self.size = dev, role, mode, size
        self.period = 1.0 / fps
        self.count = count
        self.frames = first  # a writer's next frame number: frames 0..first-1 are out already
        # (frame number, sequence, bytesused, whole: the buffer is all that frame's content)
        self.seen: list[tuple[int, int, int, bool]] = []
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            if self.role == "writer":
                self._write_loop()
            else:
                self._read_loop()
        except Exception as exc:  # recorded, reported through "pump_status"
            self.error = f"{type(exc).__name__}: {exc}"

    def _write_loop(self):
        d = self.dev
        n = self.frames
        if self.mode == "write":
            while not self.stop.is_set():
                d.write(_frame(n, self.size))
                n += 1
                self.frames = n
                time.sleep(self.period)
            return
        queued = 0
        while not self.stop.is_set():
            if queued < self.count:
                idx = queued
                queued += 1
            else:
                try:
                    idx = d.wait_dqbuf(OUT, 2.0)["index"]
                except V4L2Error as exc:
                    if exc.errno == errno.ETIMEDOUT:
                        continue
                    raise
            d.put_frame(idx, n, self.size)
            n += 1
            self.frames = n
            time.sleep(self.period)

    def _read_loop(self):
        d = self.dev
        while not self.stop.is_set():
            if self.mode == "read":
                try:
                    data = d.wait_read(self.size, 1.0)
                except V4L2Error as exc:
                    if exc.errno == errno.ETIMEDOUT:
                        continue
                    raise
                n = frame_number(data)
                self.seen.append((n, -1, len(data), data == _frame(n, len(data))))
            else:
                try:
                    b = d.wait_dqbuf(CAP, 1.0)
                except V4L2Error as exc:
                    if exc.errno == errno.ETIMEDOUT:
                        continue
                    raise
                data = bytes(d.maps[(CAP, b["index"])][:self.size])
                n = frame_number(data)
                self.seen.append((n, b["sequence"], b["bytesused"], data == _frame(n, self.size)))
                d.qbuf(CAP, b["index"])
            self.frames = len(self.seen)


class _Bg:
    """One Device call run in a thread, so the same opener can do something else meanwhile."""

    def __init__(self, dev, method, args, kwargs):
        self.value = None
        self.errno = None
        self.exc = None
        self.thread = threading.Thread(target=self._run, args=(dev, method, args, kwargs),
                                       daemon=True)
        self.thread.start()

    def _run(self, dev, method, args, kwargs):
        try:
            self.value = getattr(dev, method)(*args, **kwargs)
        except OSError as exc:
            self.errno = exc.errno
        except Exception as exc:
            self.exc = repr(exc)

    def status(self) -> dict:
        return {"done": not self.thread.is_alive(), "value": self.value, "errno": self.errno,
                "exc": self.exc}


def _frame(n, size):
    from .v4l2 import frame_bytes

    return frame_bytes(n, size)


def _child_main(cmd_fd: int, rep_fd: int, path: str, flags: int) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    dev = None
    pump: _Pump | None = None
    bg = None
    try:
        dev = Device(path, flags)
        _send(rep_fd, ("ok", None))
    except OSError as exc:
        _send(rep_fd, ("err", exc.errno, str(exc)))
        return
    while True:
        try:
            msg = _recv(cmd_fd, None)
        except (EOFError, OSError):
            return
        op, args, kwargs = msg
        try:
            if op == "exit":
                if pump:
                    pump.stop.set()
                    pump.thread.join(3)
                dev.close()
                _send(rep_fd, ("ok", None))
                return
            if op == "start_writer":
                value = _start_writer(dev, *args, **kwargs)
                pump = value.pop("pump")
            elif op == "start_reader":
                value = _start_reader(dev, *args, **kwargs)
                pump = value.pop("pump")
            elif op == "pump_status":
                value = {"frames": pump.frames if pump else 0,
                         "error": pump.error if pump else None,
                         "seen": list(pump.seen) if pump else []}
            elif op == "stop_pump":
                if pump:
                    pump.stop.set()
                    pump.thread.join(5)
                value = {"frames": pump.frames if pump else 0,
                         "error": pump.error if pump else None,
                         "alive": bool(pump and pump.thread.is_alive()),
                         "seen": list(pump.seen) if pump else []}
                pump = None
            elif op == "fn":
                value = args[0](dev, *args[1:], **kwargs)
            elif op == "bg":
                bg = _Bg(dev, args[0], args[1:], kwargs)
                value = None
            elif op == "bg_result":
                bg.thread.join(args[0] if args else 0)
                value = bg.status()
            elif op == "sleep":
                time.sleep(args[0])
                value = None
            else:
                value = getattr(dev, op)(*args, **kwargs)
                if op == "mmap":
                    value = len(value)
            _send(rep_fd, ("ok", value))
        except OSError as exc:
            _send(rep_fd, ("err", exc.errno, str(exc)))
        except Exception as exc:
            _send(rep_fd, ("exc", repr(exc), traceback.format_exc()))


def _start_writer(dev, mode="mmap", width=160, height=120, pixfmt=YUYV, count=2, fps=30,
                  set_format=True):
    fmt = dev.s_fmt(OUT, width, height, pixfmt) if set_format else dev.g_fmt(OUT)
    size = fmt["sizeimage"]
    granted = 0
    if mode == "mmap":
        granted = dev.reqbufs(OUT, count)["count"]
        for i in range(granted):
            dev.mmap(OUT, i)
        dev.streamon(OUT)
    else:
        dev.write(_frame(0, size))  # write() sets itself up (W1): frame 0 is out
    pump = _Pump(dev, "writer", mode, size, fps, granted, first=0 if mode == "mmap" else 1)
    return {"format": fmt, "count": granted, "pump": pump}


def _start_reader(dev, mode="mmap", count=2):
    fmt = dev.g_fmt(CAP)
    granted = 0
    if mode == "mmap":
        granted = dev.setup_mmap(CAP, count)
        dev.streamon(CAP)
    pump = _Pump(dev, "reader", mode, fmt["sizeimage"], 100, granted)
    return {"format": fmt, "count": granted, "pump": pump}


def _dev_fd(dev) -> int:
    """The worker's descriptor number of its opener (for matching /proc/<pid>/syscall)."""
    return dev.fd


class Worker:
    """An opener in its own process. Methods of Device are called by name."""

    def __init__(self, path: str, flags: int = os.O_RDWR | os.O_NONBLOCK, name: str = "opener",
                 timeout: float = 10.0):
        self.name = name
        self.path = path
        c_r, c_w = os.pipe()
        r_r, r_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(c_w)
                os.close(r_r)
                _child_main(c_r, r_w, path, flags)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(c_r)
        os.close(r_w)
        self.pid = pid
        self.cmd = c_w
        self.rep = r_r
        self.pending = None
        self.exited = False
        ALL_WORKERS.append(self)
        try:
            reply = _recv(self.rep, timeout)
        except (TimeoutError, EOFError):
            self.kill()
            raise Hang(f"{name}: open({path}) did not return within {timeout}s") from None
        if reply[0] != "ok":
            self._reap(2)
            raise V4L2Error(reply[1], f"{name}: open({path})")
        self.fd_number = self.call("fn", _dev_fd)

    def __repr__(self):
        return f"<Worker {self.name} pid={self.pid}>"

    # -- calls ----------------------------------------------------------------
    def send(self, op: str, *args, **kwargs) -> None:
        self.pending = op
        _send(self.cmd, (op, args, kwargs))

    def result(self, timeout: float = 10.0):
        op = self.pending
        try:
            reply = _recv(self.rep, timeout)
        except TimeoutError:
            raise Hang(f"{self.name}: {op} did not return within {timeout}s (hang)") from None
        except EOFError:
            raise Hang(f"{self.name}: process died during {op}") from None
        self.pending = None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "err":
            raise V4L2Error(reply[1], f"{self.name}: {reply[2]}")
        raise AssertionError(f"{self.name}: {op} raised {reply[1]}\n{reply[2]}")

    def done(self, timeout: float = 0.0) -> bool:
        """Has the pending call replied (without consuming the reply)?"""
        r, _, _ = select.select([self.rep], [], [], timeout)
        return bool(r)

    def blocked_in(self, call: str, request: int | None = None, timeout: float = 5.0) -> dict:
        """Wait until the pending call (sent with send()) sleeps in the kernel inside the
        module: /proc/<pid>/stat state S or D, /proc/<pid>/syscall shows `call` ("read",
        "write" or "ioctl", with `request` as its second argument) on this worker's opener,
        and its kernel stack (or wchan) is in v4l2loopback or videobuf2, not in the pipe read
        with which an idle worker waits for its next command. Returns {"blocked": bool,
        "returned": bool, "info": kernel_wait(), "how": text for a message}; the reply of a
        call that returned instead is left for result()."""
        nr = SYSCALLS.get(platform.machine(), SYSCALLS["x86_64"])[call]
        fd = self.fd_number
        deadline = time.monotonic() + timeout
        while True:
            if self.done():
                info = kernel_wait(self.pid)
                return {"blocked": False, "returned": True, "info": info,
                        "how": f"the call returned ({describe_wait(info)})"}
            info = kernel_wait(self.pid)
            sc = info["syscall"]
            same_call = (len(sc) >= 3 and sc[0] == str(nr) and int(sc[1], 16) == fd
                         and (request is None or int(sc[2], 16) & 0xFFFFFFFF == request))
            if info["state"] in ("S", "D") and same_call and in_module(info):
                return {"blocked": True, "returned": False, "info": info,
                        "how": describe_wait(info)}
            if time.monotonic() > deadline:
                return {"blocked": False, "returned": False, "info": info,
                        "how": describe_wait(info)}
            time.sleep(0.1)

    def call(self, op: str, *args, timeout: float = 10.0, **kwargs):
        self.send(op, *args, **kwargs)
        return self.result(timeout)

    def err(self, op: str, *args, timeout: float = 10.0, **kwargs) -> int:
        try:
            self.call(op, *args, timeout=timeout, **kwargs)
        except V4L2Error as exc:
            return exc.errno
        return 0

    def __getattr__(self, op):
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda *a, **k: self.call(op, *a, **k)

    # -- lifetime -------------------------------------------------------------
    def _reap(self, timeout: float) -> bool:
        if self.exited:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.pid
            if pid:
                self.exited = True
                for fd in (self.cmd, self.rep):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                if self in ALL_WORKERS:
                    ALL_WORKERS.remove(self)
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> bool:
        """Send sig; return True once the process has exited (it may be stuck in D state)."""
        if self.exited:
            return True
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        return self._reap(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the opener cleanly (exit command), SIGKILL if it does not answer."""
        if self.exited:
            return
        try:
            if self.pending is None:
                self.send("exit")
                self.result(timeout)
        except (Hang, OSError, AssertionError):
            pass
        if not self._reap(timeout):
            self.kill()


def stop_all(grace: float = 3.0, kill_wait: float = 5.0) -> list[str]:
    """Stop every worker still alive; names of those that could not be reaped.
    All at once: idle workers are asked to exit, busy ones (blocked in the kernel, perhaps)
    are killed, and one shared deadline bounds the wait however many are stuck."""
    live = [w for w in list(ALL_WORKERS) if not w.exited]
    for w in live:
        try:
            if w.pending is None:
                w.send("exit")
            else:
                os.kill(w.pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    deadline = time.monotonic() + grace
    for w in live:
        w._reap(max(0.0, deadline - time.monotonic()))
    for w in live:
        if not w.exited:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + kill_wait
    for w in live:
        w._reap(max(0.0, deadline - time.monotonic()))
    return [repr(w) for w in live if not w.exited]
