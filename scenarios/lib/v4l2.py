"""Small V4L2 helper for the scenarios: one Device per opener (open file description).

Built on linuxpy.video.raw (ioctl numbers and ctypes structures) and fcntl.ioctl. Every
call either returns plain Python values or raises V4L2Error carrying the errno, so a
scenario can assert on EBUSY / EINVAL / EAGAIN with `err(dev.reqbufs, OUT, 4)`.

Nothing here touches a device at import time.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
import time

from linuxpy.video import raw

CAP = int(raw.BufType.VIDEO_CAPTURE)
OUT = int(raw.BufType.VIDEO_OUTPUT)
MMAP = int(raw.Memory.MMAP)
USERPTR = int(raw.Memory.USERPTR)
DMABUF = int(raw.Memory.DMABUF)
OVERLAY = int(raw.Memory.OVERLAY)

CAP_VIDEO_CAPTURE = int(raw.Capability.VIDEO_CAPTURE)
CAP_VIDEO_OUTPUT = int(raw.Capability.VIDEO_OUTPUT)
CAP_STREAMING = int(raw.Capability.STREAMING)
CAP_READWRITE = int(raw.Capability.READWRITE)
BUF_CAP_SUPPORTS_MMAP = 0x1  # V4L2_BUF_CAP_SUPPORTS_MMAP

IN_ST_NO_SIGNAL = int(raw.InputStatus.NO_SIGNAL)

BUF_FLAG_MAPPED = int(raw.BufferFlag.MAPPED)
BUF_FLAG_QUEUED = int(raw.BufferFlag.QUEUED)
BUF_FLAG_DONE = int(raw.BufferFlag.DONE)

YUYV = int(raw.PixelFormat.YUYV)
RGB24 = int(raw.PixelFormat.RGB24)
UYVY = int(raw.PixelFormat.UYVY)

CID_USER_BASE = 0x00980900
CID_KEEP_FORMAT = CID_USER_BASE | 0xF000
CID_SUSTAIN_FRAMERATE = CID_KEEP_FORMAT + 1
CID_TIMEOUT = CID_KEEP_FORMAT + 2
CID_TIMEOUT_IMAGE_IO = CID_KEEP_FORMAT + 3
CID_AUTO_WHITE_BALANCE = CID_USER_BASE + 12

EVENT_PRI_CLIENT_USAGE = 0x10E00001  # V4L2_EVENT_PRIVATE_START (0x08000000) based id

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLPRI = select.POLLPRI
POLLERR = select.POLLERR
POLLRDNORM = select.POLLRDNORM
POLLWRNORM = select.POLLWRNORM

TYPE_NAMES = {CAP: "CAPTURE", OUT: "OUTPUT"}


def tname(buf_type: int) -> str:
    return TYPE_NAMES.get(buf_type, f"type {buf_type}")


def ename(code: int | None) -> str:
    if not code:
        return "success"
    return errno.errorcode.get(code, str(code))


def fourcc(code: int) -> str:
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


class V4L2Error(OSError):
    def __init__(self, code: int, op: str):
        super().__init__(code, f"{op}: {ename(code)}")
        self.op = op

    def __reduce__(self):
        return (V4L2Error, (self.errno, self.op))


def err(fn, *args, **kwargs) -> int:
    """Run fn; return 0 on success, else the errno it failed with."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno or -1
    return 0


def _req(ioc) -> int:
    return int(ioc) & 0xFFFFFFFF


REQ_DQBUF = _req(raw.IOC.DQBUF)  # VIDIOC_DQBUF as /proc/<pid>/syscall shows it


def _ioctl(fd: int, ioc, arg, op: str):
    try:
        fcntl.ioctl(fd, _req(ioc), arg)
    except OSError as exc:
        raise V4L2Error(exc.errno, op) from None
    return arg


def frame_bytes(n: int, size: int) -> bytes:
    """A frame whose content identifies frame n: 8-byte counter, then a fill byte."""
    head = n.to_bytes(8, "little")
    fill = bytes([(n * 37 + 11) & 0xFF or 1])
    return head + fill * (size - 8)


def frame_number(data: bytes) -> int:
    return int.from_bytes(bytes(data[:8]), "little")


class Device:
    """One opener of a V4L2 node."""

    def __init__(self, path: str, flags: int = os.O_RDWR | os.O_NONBLOCK):
        self.path = path
        self.flags = flags
        self.fd = os.open(path, flags)
        self.maps: dict[tuple[int, int], mmap.mmap] = {}

    # -- lifetime -------------------------------------------------------------
    def close(self):
        self.munmap_all()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_blocking(self, blocking: bool):
        fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fl = fl & ~os.O_NONBLOCK if blocking else fl | os.O_NONBLOCK
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fl)

    # -- queries --------------------------------------------------------------
    def querycap(self) -> dict:
        c = _ioctl(self.fd, raw.IOC.QUERYCAP, raw.v4l2_capability(), "QUERYCAP")
        return {
            "driver": bytes(c.driver).rstrip(b"\0").decode(errors="replace"),
            "card": bytes(c.card).rstrip(b"\0").decode(errors="replace"),
            "bus_info": bytes(c.bus_info).rstrip(b"\0").decode(errors="replace"),
            "capabilities": c.capabilities,
            "device_caps": c.device_caps,
        }

    def device_caps(self) -> int:
        return self.querycap()["device_caps"]

    @staticmethod
    def _fmt_dict(f) -> dict:
        p = f.fmt.pix
        return {
            "type": f.type,
            "width": p.width,
            "height": p.height,
            "pixelformat": p.pixelformat,
            "bytesperline": p.bytesperline,
            "sizeimage": p.sizeimage,
            "field": p.field,
        }

    def _fmt(self, ioc, op, buf_type, width=0, height=0, pixfmt=0, sizeimage=0):
        f = raw.v4l2_format()
        f.type = buf_type
        if ioc != raw.IOC.G_FMT:
            f.fmt.pix.width = width
            f.fmt.pix.height = height
            f.fmt.pix.pixelformat = pixfmt
            f.fmt.pix.field = 1  # V4L2_FIELD_NONE
            f.fmt.pix.sizeimage = sizeimage
        _ioctl(self.fd, ioc, f, f"{op}({tname(buf_type)})")
        return self._fmt_dict(f)

    def g_fmt(self, buf_type: int) -> dict:
        return self._fmt(raw.IOC.G_FMT, "G_FMT", buf_type)

    def s_fmt(self, buf_type: int, width: int, height: int, pixfmt: int = YUYV, sizeimage=0):
        return self._fmt(raw.IOC.S_FMT, "S_FMT", buf_type, width, height, pixfmt, sizeimage)

    def try_fmt(self, buf_type: int, width: int, height: int, pixfmt: int = YUYV):
        return self._fmt(raw.IOC.TRY_FMT, "TRY_FMT", buf_type, width, height, pixfmt)

    def g_parm(self, buf_type: int):
        p = raw.v4l2_streamparm()
        p.type = buf_type
        return _ioctl(self.fd, raw.IOC.G_PARM, p, f"G_PARM({tname(buf_type)})")

    def s_parm(self, buf_type: int, num: int = 1, den: int = 30):
        p = raw.v4l2_streamparm()
        p.type = buf_type
        if buf_type == OUT:
            p.parm.output.timeperframe.numerator = num
            p.parm.output.timeperframe.denominator = den
        else:
            p.parm.capture.timeperframe.numerator = num
            p.parm.capture.timeperframe.denominator = den
        _ioctl(self.fd, raw.IOC.S_PARM, p, f"S_PARM({tname(buf_type)})")
        return True

    def enum_fmt(self, buf_type: int) -> list[int]:
        out = []
        for i in range(64):
            d = raw.v4l2_fmtdesc()
            d.index = i
            d.type = buf_type
            try:
                _ioctl(self.fd, raw.IOC.ENUM_FMT, d, "ENUM_FMT")
            except V4L2Error:
                break
            out.append(d.pixelformat)
        return out

    # -- buffers --------------------------------------------------------------
    def reqbufs(self, buf_type: int, count: int, memory: int = MMAP) -> dict:
        r = raw.v4l2_requestbuffers()
        r.type = buf_type
        r.count = count
        r.memory = memory
        _ioctl(self.fd, raw.IOC.REQBUFS, r, f"REQBUFS({tname(buf_type)}, {count})")
        if count == 0:
            self.munmap_type(buf_type)
        return {"count": r.count, "capabilities": r.capabilities}

    def querybuf(self, buf_type: int, index: int, memory: int = MMAP) -> dict:
        b = raw.v4l2_buffer()
        b.type = buf_type
        b.index = index
        b.memory = memory
        _ioctl(self.fd, raw.IOC.QUERYBUF, b, f"QUERYBUF({tname(buf_type)}, {index})")
        return self._buf_dict(b)

    @staticmethod
    def _buf_dict(b) -> dict:
        return {
            "index": b.index,
            "type": b.type,
            "bytesused": b.bytesused,
            "flags": b.flags,
            "sequence": b.sequence,
            "ts": (b.timestamp.secs, b.timestamp.usecs),
            "offset": b.m.offset,
            "length": b.length,
            "memory": b.memory,
        }

    def mmap(self, buf_type: int, index: int) -> mmap.mmap:
        q = self.querybuf(buf_type, index)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if buf_type == OUT else 0)
        m = mmap.mmap(self.fd, q["length"], mmap.MAP_SHARED, prot, offset=q["offset"])
        self.maps[(buf_type, index)] = m
        return m

    def munmap(self, buf_type: int, index: int):
        m = self.maps.pop((buf_type, index), None)
        if m is not None:
            m.close()

    def munmap_type(self, buf_type: int):
        for key in [k for k in self.maps if k[0] == buf_type]:
            self.munmap(*key)

    def munmap_all(self):
        for key in list(self.maps):
            self.munmap(*key)

    def qbuf(self, buf_type: int, index: int, bytesused: int = 0, memory: int = MMAP,
             ts: tuple[int, int] | None = None) -> dict:
        b = raw.v4l2_buffer()
        b.type = buf_type
        b.index = index
        b.memory = memory
        b.bytesused = bytesused
        b.field = 1
        if ts is not None:
            b.timestamp.secs, b.timestamp.usecs = ts
        _ioctl(self.fd, raw.IOC.QBUF, b, f"QBUF({tname(buf_type)}, {index})")
        return self._buf_dict(b)

    def dqbuf(self, buf_type: int, memory: int = MMAP, index: int = 0) -> dict:
        """DQBUF; `index` is what the caller leaves in the struct (the driver must ignore it
        and fill in the buffer it hands back)."""
        b = raw.v4l2_buffer()
        b.type = buf_type
        b.memory = memory
        b.index = index
        _ioctl(self.fd, raw.IOC.DQBUF, b, f"DQBUF({tname(buf_type)})")
        return self._buf_dict(b)

    def streamon(self, buf_type: int):
        _ioctl(self.fd, raw.IOC.STREAMON, ctypes.c_int(buf_type), f"STREAMON({tname(buf_type)})")
        return True

    def streamoff(self, buf_type: int):
        _ioctl(self.fd, raw.IOC.STREAMOFF, ctypes.c_int(buf_type),
               f"STREAMOFF({tname(buf_type)})")
        return True

    # -- waiting --------------------------------------------------------------
    def poll(self, events: int = POLLIN | POLLOUT | POLLPRI, timeout: float = 0.0) -> int:
        p = select.poll()
        p.register(self.fd, events)
        res = p.poll(int(timeout * 1000))
        return res[0][1] if res else 0

    def wait_dqbuf(self, buf_type: int, timeout: float = 5.0) -> dict:
        """DQBUF on a non-blocking fd, polling up to timeout; V4L2Error(ETIMEDOUT) if none."""
        deadline = time.monotonic() + timeout
        ev = POLLIN if buf_type == CAP else POLLOUT
        while True:
            try:
                return self.dqbuf(buf_type)
            except V4L2Error as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise V4L2Error(errno.ETIMEDOUT, f"DQBUF({tname(buf_type)}) within {timeout}s")
            self.poll(ev | POLLERR, min(left, 0.2))

    # -- read / write ---------------------------------------------------------
    def read(self, n: int) -> bytes:
        try:
            return os.read(self.fd, n)
        except OSError as exc:
            raise V4L2Error(exc.errno, "read()") from None

    def write(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except OSError as exc:
            raise V4L2Error(exc.errno, "write()") from None

    def wait_read(self, n: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.read(n)
            except V4L2Error as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise V4L2Error(errno.ETIMEDOUT, f"read() within {timeout}s")
            self.poll(POLLIN | POLLERR, min(left, 0.2))

    # -- controls and events --------------------------------------------------
    def g_ctrl(self, cid: int) -> int:
        c = raw.v4l2_control()
        c.id = cid
        _ioctl(self.fd, raw.IOC.G_CTRL, c, f"G_CTRL({cid:#x})")
        return c.value

    def s_ctrl(self, cid: int, value: int) -> int:
        c = raw.v4l2_control()
        c.id = cid
        c.value = value
        _ioctl(self.fd, raw.IOC.S_CTRL, c, f"S_CTRL({cid:#x})")
        return c.value

    def subscribe(self, ev_type: int, ev_id: int = 0, flags: int = 0):
        s = raw.v4l2_event_subscription()
        s.type = ev_type
        s.id = ev_id
        s.flags = flags
        _ioctl(self.fd, raw.IOC.SUBSCRIBE_EVENT, s, f"SUBSCRIBE_EVENT({ev_type:#x})")
        return True

    def dqevent(self) -> dict:
        e = raw.v4l2_event()
        _ioctl(self.fd, raw.IOC.DQEVENT, e, "DQEVENT")
        data = bytes(e.u.data)
        return {"type": e.type, "pending": e.pending, "sequence": e.sequence,
                "id": e.id, "u32": int.from_bytes(data[:4], "little")}

    # -- other ioctls used by the client replays ------------------------------
    def ioctl(self, name: str, arg):
        """Any VIDIOC_<name> with a linuxpy ctypes argument; returns the argument."""
        return _ioctl(self.fd, getattr(raw.IOC, name), arg, name)

    def enum_framesizes(self, pixfmt: int) -> list[tuple[int, int]]:
        out = []
        for i in range(32):
            f = raw.v4l2_frmsizeenum()
            f.index = i
            f.pixel_format = pixfmt
            try:
                self.ioctl("ENUM_FRAMESIZES", f)
            except V4L2Error:
                break
            if f.type == 1:  # discrete
                out.append((f.m1.discrete.width, f.m1.discrete.height))
            else:
                out.append((f.m1.stepwise.max_width, f.m1.stepwise.max_height))
                break
        return out

    def enum_frameintervals(self, pixfmt: int, width: int, height: int) -> int:
        n = 0
        for i in range(32):
            f = raw.v4l2_frmivalenum()
            f.index = i
            f.pixel_format = pixfmt
            f.width = width
            f.height = height
            try:
                self.ioctl("ENUM_FRAMEINTERVALS", f)
            except V4L2Error:
                break
            n += 1
            if f.type != 1:
                break
        return n

    def _enuminput(self, index: int):
        i = raw.v4l2_input()
        i.index = index
        self.ioctl("ENUMINPUT", i)
        return i

    def enuminput(self, index: int = 0) -> str:
        return bytes(self._enuminput(index).name).rstrip(b"\0").decode(errors="replace")

    def input_status(self, index: int = 0) -> int:
        """ENUMINPUT's status flags (V4L2_IN_ST_*) of one input."""
        return int(self._enuminput(index).status)

    def enumoutput(self, index: int = 0) -> str:
        o = raw.v4l2_output()
        o.index = index
        self.ioctl("ENUMOUTPUT", o)
        return bytes(o.name).rstrip(b"\0").decode(errors="replace")

    def g_input(self) -> int:
        return self.ioctl("G_INPUT", ctypes.c_int(0)).value

    def s_input(self, index: int = 0) -> int:
        return self.ioctl("S_INPUT", ctypes.c_int(index)).value

    def g_output(self) -> int:
        return self.ioctl("G_OUTPUT", ctypes.c_int(0)).value

    def g_std(self) -> int:
        return self.ioctl("G_STD", ctypes.c_uint64(0)).value

    def create_bufs(self, buf_type: int, count: int, memory: int = MMAP) -> dict:
        c = raw.v4l2_create_buffers()
        c.count = count
        c.memory = memory
        c.format.type = buf_type
        self.ioctl("CREATE_BUFS", c)
        return {"index": c.index, "count": c.count, "capabilities": c.capabilities}

    # -- composite helpers ----------------------------------------------------
    def setup_mmap(self, buf_type: int, count: int, queue: bool = True) -> int:
        """REQBUFS + mmap every buffer (+ QBUF all for CAPTURE); return the granted count."""
        n = self.reqbufs(buf_type, count)["count"]
        for i in range(n):
            self.mmap(buf_type, i)
            if queue and buf_type == CAP:
                self.qbuf(CAP, i)
        return n

    def put_frame(self, index: int, n: int, size: int, ts=None) -> dict:
        """Fill OUTPUT buffer index with frame n and queue it."""
        m = self.maps[(OUT, index)]
        m.seek(0)
        m.write(frame_bytes(n, min(size, len(m))))
        if ts is None:
            now = time.time()
            ts = (int(now), int((now % 1) * 1e6))
        return self.qbuf(OUT, index, bytesused=min(size, len(m)), ts=ts)

    def read_frame_number(self, buf_type: int, index: int) -> int:
        return frame_number(self.maps[(buf_type, index)][:8])
