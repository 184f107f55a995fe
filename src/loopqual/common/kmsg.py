"""The kernel log as it grows: one reader for the guest runner (the whole cell) and the
scenarios (each scenario). Standard library only: it runs in the guest."""

from __future__ import annotations

import os


class KmsgReader:
    """New kernel-log lines since the reader was made (or last drained). Where /dev/kmsg
    cannot be opened the reader sees nothing (`available` is False)."""

    def __init__(self):
        try:
            self.fd: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self.fd = None
            return
        os.lseek(self.fd, 0, os.SEEK_END)

    @property
    def available(self) -> bool:
        return self.fd is not None

    def drain(self, timestamps: bool = True) -> list[str]:
        """Every record since the last drain, one line each ("[seconds] text" with
        timestamps); continuation lines (" KEY=value") are left out."""
        lines: list[str] = []
        while self.fd is not None:
            try:
                rec = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten before they were read: go on
                continue
            except OSError:
                break
            if not rec:
                break
            # "prio,seq,usec,flags;message" then continuation lines " KEY=value"
            head, _, msg = rec.partition(";")
            usec = head.split(",")[2] if head.count(",") >= 2 else "0"
            text = msg.split("\n")[0]
            lines.append(f"[{int(usec) / 1e6:12.6f}] {text}" if timestamps else text)
        return lines

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
