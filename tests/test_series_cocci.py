"""coccinelle in the series check (src/loopqual/review/seriescocci.py): spatch's report-mode output over
the module source, recorded from real runs of the kernel tree's 73 semantic patches on the
stock 0.15.4 base and on a state of the series whose QBUF took dev->frame_mutex under a
condition and returned early under the same one (mini_lock.cocci's report, since removed)."""

from __future__ import annotations

import json
from collections import Counter

from loopqual.review import seriescocci


def outputs(fixtures, label: str) -> dict[str, str]:
    return json.loads((fixtures / "coccinelle" / f"recorded-6.12-tree-{label}.json").read_text())


def test_reports_drop_line_numbers_and_spatch_notes(fixtures):
    base = outputs(fixtures, "base-0.15.4")
    # stream_open.cocci's notes about itself name no source line: not a report
    assert seriescocci.parse_reports("api/stream_open.cocci", base["api/stream_open.cocci"]) == []
    (semi,) = seriescocci.parse_reports("misc/semicolon.cocci", base["misc/semicolon.cocci"])
    assert semi == "misc/semicolon.cocci: Unneeded semicolon"
    (ret,) = seriescocci.parse_reports("misc/returnvar.cocci", base["misc/returnvar.cocci"])
    assert ret == 'misc/returnvar.cocci: Unneeded variable: "result". Return "N" on line N'


def test_a_report_the_base_lacks_is_new_even_where_lines_moved(fixtures):
    b, p = seriescocci.compare(outputs(fixtures, "base-0.15.4"),
                               outputs(fixtures, "series-with-conditional-lock"))
    # the same four kinds at other lines in both, and one more in the series
    assert p - b == Counter({"locks/mini_lock.cocci: preceding lock on line N": 1})
    assert b - p == Counter()
    assert b["api/atomic_as_refcounter.cocci: WARNING: atomic_dec_and_test variation before "
             "object free at line N."] == 2
    result = seriescocci.CocciResult(73, "spatch version 1.1.1", [], [], ["x"], [])
    assert "new 1" in seriescocci.render(result)
