"""K6's judgement of the ticking page's reports (the page and the browsers that run it:
loopqual.guest.programs.ticking): each browser read the loopback device, and Firefox's page
ended its rude-stop sessions."""

from __future__ import annotations

import time

from loopqual.guest.programs.ticking import (
    FIREFOX_SESSIONS,
    SESSION_DISTINCT,
    TickingBrowser,
    pump_all,
)

# from the browsers' first frames until Firefox's page has ended its sessions (each one's
# getUserMedia again; under TCG a camera open took seconds to tens of seconds)
SESSIONS_LIMIT_S = FIREFOX_SESSIONS * 100


def judge_labels_and_sessions(browsers: list[TickingBrowser],
                              firefox: TickingBrowser, card: str, firefox_version: str,
                              steps: dict) -> None:
    """Each browser reads the loopback device (chosen by its label); Firefox's page then ends
    its FIREFOX_SESSIONS sessions the rude way (launched with sessions=FIREFOX_SESSIONS), each
    after it saw SESSION_DISTINCT distinct frames. Records what it saw in steps."""
    steps["labels"] = labels = {b.name: b.last.get("label") for b in browsers}
    wrong = {name: label for name, label in labels.items() if card[:20] not in (label or "")}
    inputs = {b.name: b.last.get("devices") for b in browsers}
    assert not wrong, (f"the browsers opened {wrong}, expected the loopback device {card!r}; "
                       f"video inputs: {inputs}")
    t0 = time.monotonic()
    while (len(firefox.last.get("sessions") or []) < FIREFOX_SESSIONS and not firefox.log.closed
           and time.monotonic() - t0 < SESSIONS_LIMIT_S):
        pump_all(browsers, 2.0)
    steps["firefox_sessions_s"] = round(time.monotonic() - t0, 1)
    steps["firefox_sessions"] = sessions = firefox.last.get("sessions") or []
    assert len(sessions) == FIREFOX_SESSIONS and all(
        x["distinct"] >= SESSION_DISTINCT for x in sessions), (
        f"{firefox_version}: each of {FIREFOX_SESSIONS} capture sessions, each ended by a rude "
        f"stop, should see {SESSION_DISTINCT} distinct non-blank frames; after "
        f"{steps['firefox_sessions_s']:.0f} s (limit {SESSIONS_LIMIT_S} s) the page had ended "
        f"{len(sessions)}: {sessions}; its last report: {firefox.state()}")
