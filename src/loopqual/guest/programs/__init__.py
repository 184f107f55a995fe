"""The real programs the guest drives (OBS Studio, headless Chromium and Firefox), the
crash reports of those that die, and the set-up problems they meet: shared by the scenarios
(scenarios/, which import them from here) and `loopqual bench --programs`."""
