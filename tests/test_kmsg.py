"""The one kernel-log reader (guest runner and scenarios), on the host's real /dev/kmsg (the
tests run as root, as CI does)."""

from __future__ import annotations

import uuid

from loopqual.common.kmsg import KmsgReader


def test_reader_sees_only_what_was_logged_after_it_was_made():
    before = f"loopqual-kmsg-before-{uuid.uuid4().hex[:8]}"
    after = f"loopqual-kmsg-after-{uuid.uuid4().hex[:8]}"
    with open("/dev/kmsg", "w") as f:
        f.write(before + "\n")
    reader = KmsgReader()
    try:
        with open("/dev/kmsg", "w") as f:
            f.write(after + "\n")
        stamped = reader.drain()
        assert any(line.endswith(after) and line.startswith("[") for line in stamped)
        assert not any(before in line for line in stamped)
        assert reader.drain() == []
    finally:
        reader.close()
