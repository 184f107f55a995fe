"""K6's ffmpeg reader counts frames from ffmpeg's framemd5 file while ffmpeg writes it. The
fixture is the head of that file as K6 left it on debian-sid (make test, cell ec1, patched)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))

from together.test_k6_everyone import FfmpegReader  # noqa: E402

RECORDED = Path(__file__).parent / "fixtures/k6/recorded-sid-ffmpeg-framemd5-head.txt.gz"


def _reader(path: Path) -> FfmpegReader:
    r = FfmpegReader.__new__(FfmpegReader)  # no ffmpeg started: only its output file is read
    r.out = str(path)
    return r


def test_a_line_ffmpeg_is_still_writing_is_not_counted(tmp_path):
    text = gzip.decompress(RECORDED.read_bytes()).decode()
    whole = tmp_path / "whole.txt"
    whole.write_text(text)
    full = _reader(whole)
    assert len(full.digests()) == 50 and full.changes() == 50
    # the next frame's line as a read racing ffmpeg's write finds it: cut inside its MD5
    partial = tmp_path / "partial.txt"
    partial.write_text(text + text.splitlines()[-1][:-7])
    assert _reader(partial).digests() == full.digests()
    assert _reader(partial).changes() == full.changes()
