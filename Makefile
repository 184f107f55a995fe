# loopqual: two entry points, both idempotent on a fresh Debian bookworm machine (root).
#   make qualify   install what is missing, build, boot, run the default matrix, report
#   make test      host unit tests, then a real guest run that gates the patched module
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LOOPQUAL := $(VENV)/bin/loopqual
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Debian packages the harness needs on the host (the guest shares the host's root).
# obs-plugins (the virtual camera, obs-websocket, the media source) is only a recommendation
# of obs-studio, and recommendations are not installed here: it is named.
# mmdebstrap makes the build roots of kernels from newer suites (kernel/kernels.toml entries
# with a suite: sid, trixie-backports), which are never installed on the host.
# gdb reads the core of a real program that died of a signal in a scenario (src/loopqual/guest/programs/crash.py).
# sparse and coccinelle check the series as a reviewer does (make series-check, C=2).
APT_PACKAGES := qemu-system-x86 linux-image-amd64 linux-headers-amd64 \
	linux-image-6.12-amd64 linux-headers-6.12-amd64 \
	build-essential kmod dwarves v4l-utils ffmpeg \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	python3-venv python3-dev busybox-static zstd udev chromium firefox-esr \
	mmdebstrap flex bison bc libelf-dev libssl-dev obs-studio obs-plugins xvfb libgl1-mesa-dri gdb sparse \
	coccinelle
APT_STAMP := .cache/apt-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-12).stamp
VENV_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: all packages deps apt venv lint unit series-check selftest gate test qualify qualify-programs compare compare-programs compare-delivery compare-regressions bench bench-programs clean
all: test

# make ends with its own exit 2 whenever a recipe fails, whatever the recipe returned. Each
# step's own exit code (loopqual: 0 every gated result passed, 1 a gated result failed,
# 2 incomplete or bad input; pytest: 1 a test failed, 5 no test collected) is kept in
# $(EXIT_CODES)/<step>; `ci/step-exit-code` reads them back (.ci/run exits with it).
EXIT_CODES ?= results/exit-codes
keep_code = mkdir -p $(EXIT_CODES); rm -f $(EXIT_CODES)/$(1); $(2); echo $$? > $(EXIT_CODES)/$(1)
record = $(call keep_code,$(1),$(2)); exit $$(cat $(EXIT_CODES)/$(1))

deps: apt venv

packages:
	@echo $(APT_PACKAGES) | tr ' ' '\n'

apt: $(APT_STAMP)
$(APT_STAMP):
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
	    | awk '$$4 != "installed" {print $$1}'; \
	  for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "apt: all packages present"; fi
	@mkdir -p .cache && touch $@

venv: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml | $(APT_STAMP)
	@test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# The guest's root is read-only and cannot keep .pyc files: compile them here.
	$(PY) -m compileall -q -j 0 $(VENV)/lib src scenarios >/dev/null || true
	@touch $@

lint: venv
	@$(call record,lint,$(VENV)/bin/ruff check src scenarios tests)

# The patch series as a reviewer reads it (issue 27): checkpatch.pl --strict on every patch,
# no finding beyond kernel/checkpatch-baseline.toml; the cover letter lists the series; every
# prefix of the series builds with W=1 adding no warning against each gate kernel; sparse
# (C=2, debian-6.12) and coccinelle (the kernel tree's semantic patches) find nothing the
# base lacks. Builds are cached by their inputs: an
# unchanged series costs seconds. The checkpatch script comes from the debug kernel's tree.
series-check: venv
	@mkdir -p results
	@$(call record,series-check,$(LOOPQUAL) series check --out results/series-check.json)

UNIT_ARGS ?=
unit: venv
	@$(call record,unit,$(PY) -m pytest -q -m "not guest" tests $(UNIT_ARGS))

# The harness's own paths in real guests: panic -> incomplete -> reboot, a stray opener,
# SIGTERM/SIGINT stopping every guest and still writing results, two shards merged.
selftest: venv
	@$(call record,selftest,$(PY) -m pytest -q -m guest tests)

# The gate (issues 4, 9): the patched module (0.15.4 + the series) on bookworm's 6.1 and 6.12
# and sid's newest kernel (built in a sid build root), default parameter sets, one boot each:
# the contract, v4l2-compliance 1.32 (sid's, from a sid root; bookworm's 1.22 on the two
# bookworm kernels) and the real clients (cell ec1; also ec0 on debian-6.12) on every kernel;
# the real programs (issue 10), cell ec1, on every kernel: OBS Studio's virtual camera under
# Xvfb, stopped and started 10 times (K3; suite apps) and K6 with every real program at once
# (suite together: an ffmpeg writer hands headless Chromium, headless Firefox ESR and ffmpeg
# over to OBS's camera; Firefox's page begins with three sessions ended the rude way). K6's
# browsers judge K4 and K5 (each opens the loopback device by its label and reads distinct
# frames), so the browser suite (each browser alone, started a second time) runs in `make
# qualify-programs` and `make compare`, not here. Delivery measured by content (issue 24,
# S7-S9 and D1-D3): suite delivery in cells ec0 and ec1 of every kernel, delivery-buf8 (8
# buffers) on debian-6.12. Upstream's bug reports (issue 25): suite regressions-ec1 on
# debian-6.1, regressions-ec0 on debian-6.12. Then the rules table of what ran (patched per kernel), which fails unless every
# rule of the contract holds on each.
# History: K6 on every kernel with the browser suite too took make test to 3191 s (stop 22);
# without the browser suite 2275 s and 2462 s (stop 23: OBS aborted in K3, and a Firefox
# session starved on debian-6.12, and debian-sid's guest logged an RCU stall beside two
# other guests). Since then K3 goes on after one OBS heap abort (apps/test_obs.py), Firefox's sessions
# end by frames, not seconds, and Firefox runs with fewer processes (src/loopqual/guest/programs/browser.py).
# OBS on debian-sid, beside two other guests, once aborted ("double free or corruption
# (!prev)", glibc) after its 10th camera stop (stop 18's CI B) and once did nothing for 60 s
# after its 6th StartVirtualCam (stop 20's CI B); since then K3 passed there 4 times with two
# host busy loops beside it (stop 21) and in stop 22's CI (K3 75-145 s a kernel). A stall
# now reports each OBS thread's kernel wait and stack (src/loopqual/guest/programs/crash.py live_threads).
GATE_KERNELS := --kernel debian-6.1 --kernel debian-6.12 --kernel debian-sid
GATE_SUITES := --suite contract --suite compliance:debian-6.1,debian-6.12 --suite compliance-sid \
	--suite clients:debian-6.12 --suite clients-ec1:debian-6.1,debian-sid \
	--suite apps --suite together --suite delivery --suite delivery-buf8:debian-6.12 \
	--suite regressions-ec1:debian-6.1 --suite regressions-ec0:debian-6.12
# Gate guests at once, beside the side lane's one: three saturated the two cores and OBS
# crashed in K3 under that load (docs/ci-time.md). The planner staggers the cells that start
# the browsers and OBS (suites marked heavy) over the lanes that start together.
GATE_JOBS ?= 2
# How long the side lane's guest runs beside the gate's (the selftest then the sanitizer
# lane: 650-1100 s in recent runs, docs/ci-time.md): the planner starts no heavy cell before
# it ends where a lane has other work for that time (--beside-s).
GATE_SIDE_LANE_S ?= 900
# The side lane keeps to that window: if its sanitizer guest cannot start this soon after the
# gate began (a cold cache builds the debug kernel first, 23-36 min), it boots once the gate's
# guests are done, not beside their heavy cells (a cold CI's K6 on debian-sid and delivery on
# the debug kernel each failed that way, three guests on two cores: docs/ci-time.md).
SIDE_LANE_LATE_S ?= 450
# Its sanitizer lane (issue 12): patched on the KASAN + lockdep + kmemleak kernel (built once
# into loopqual's cache), cell ec1: the contract (with its 5 s random walk) and both
# v4l2-compliance versions, and delivery at 10 fps (suite delivery-debug); a cell passes only with no sanitizer report, no leak through the
# module (kmemleak scan after the cell) and a clean rmmod. `make compare` runs ec0 and ec1
# there, every source, with the 60 s random walk (suite stress) too: in the gate it cost 3.5
# minutes of the side lane, which is make test's longest (2026-12-02).
# In the same boot, after it, the cell `detectors` fires each detector once with loopqual's
# test module (not gated: its reports are its purpose); tests/test_guest_detectors.py then
# checks on results/gate-sanitizer that each came back as its own class (step detectors).
# One boot of the debug kernel instead of two: with other guests beside it, its boot took
# 13 minutes to more than 24 here (udev's coldplug under KASAN and lockdep).
# The real programs stay on the production kernels: there, ffmpeg alone took over 90 s to
# start writing.
SANITIZER_SUITES := --suite contract --suite stress --suite compliance --suite compliance-sid \
	--suite delivery-debug
SANITIZER := --kernel debian-6.12-debug --params ec0 --params ec1 $(SANITIZER_SUITES)
SANITIZER_GATE := --kernel debian-6.12-debug --params ec1 --params detectors --suite contract \
	--suite compliance --suite compliance-sid --suite delivery-debug --suite detectors \
	--module patched
# The side lane runs one guest at a time beside the gate's two: in `make test` the harness's
# own guest selftest first (GATE_WITH_SELFTEST=1; its detectors test reads the sanitizer
# lane's cell instead of booting the debug kernel again), then the sanitizer lane.
GATE_WITH_SELFTEST ?=
gate: venv
	$(PY) -m compileall -q src scenarios tests >/dev/null
	@mkdir -p results
	@echo "gate: the side lane ($(if $(GATE_WITH_SELFTEST),the selftest then )the sanitizer lane) runs beside the gate; its progress goes to results/gate-side.log"
	@rm -f $(EXIT_CODES)/gate
	@( exec >results/gate-side.log 2>&1; side_t0=$$(date +%s); \
	   $(if $(GATE_WITH_SELFTEST),$(call keep_code,selftest,$(PY) -m pytest -q -m guest tests \
		--deselect tests/test_guest_detectors.py::test_each_detector_reports_its_own_class);) \
	   $(call keep_code,gate-sanitizer,$(LOOPQUAL) build --kernel debian-6.12-debug \
		--module patched && { late=$$(( $$(date +%s) - side_t0 )); \
		if [ $$late -gt $(SIDE_LANE_LATE_S) ]; then \
		  echo "side lane: ready $$late s after the gate began (more than $(SIDE_LANE_LATE_S) s):" \
		    "the sanitizer lane waits for the gate's guests to finish"; \
		  while [ ! -f $(EXIT_CODES)/gate ]; do sleep 5; done; fi; \
		$(LOOPQUAL) qualify --jobs 1 $(SANITIZER_GATE) --out results/gate-sanitizer; }); \
	   $(call keep_code,detectors,LOOPQUAL_DETECTORS_RESULTS=results/gate-sanitizer \
		$(PY) -m pytest -q -m guest tests/test_guest_detectors.py) ) & \
	$(call keep_code,gate,$(LOOPQUAL) qualify --jobs $(GATE_JOBS) $(GATE_KERNELS) --module patched \
		$(GATE_SUITES) --beside-s $(GATE_SIDE_LANE_S) --out results/gate); \
	wait; echo "--- the side lane (results/gate-side.log, its end):"; \
	if [ -f results/series-check.json ] && [ -f results/gate/results.json ]; then \
	  $(LOOPQUAL) report results/gate --series-check results/series-check.json >/dev/null; fi; \
	tail -n 60 results/gate-side.log; \
	failed=0; for step in $(if $(GATE_WITH_SELFTEST),selftest )gate gate-sanitizer detectors; do \
	  code=$$(cat $(EXIT_CODES)/$$step); echo "gate: step $$step exit $$code"; \
	  [ "$$code" = 0 ] || [ "$$failed" != 0 ] || failed=$$code; done; \
	for step in gate gate-sanitizer; do [ "$$(cat $(EXIT_CODES)/$$step)" = 0 ] && continue; \
	  echo "--- step $$step failed: its cells and problems (results/$$step/report.html)"; \
	  $(LOOPQUAL) report results/$$step --table | grep -v '^results/'; done; \
	for step in $(if $(GATE_WITH_SELFTEST),selftest )detectors; do \
	  [ "$$(cat $(EXIT_CODES)/$$step)" = 0 ] && continue; \
	  echo "--- step $$step failed: its pytest lines (results/gate-side.log)"; \
	  grep -E '^(FAILED|ERROR) |^E  ' results/gate-side.log | tail -n 40; done; \
	exit $$failed
	@$(call record,gate-rules,$(LOOPQUAL) compare --gated-must-hold results/gate)

# The real desktop programs (Chromium, Firefox, OBS Studio), Mozilla's one-frame set-up and
# K6 with every real program at once (suite together) on every kernel of the gate, patched,
# cell ec1 (the gate runs the first two suites without the one-frame scenarios).
qualify-programs: venv
	$(PY) -m compileall -q src scenarios >/dev/null
	@$(call record,qualify-programs,$(LOOPQUAL) qualify $(GATE_KERNELS) --module patched \
		--params ec1 --suite browser --suite apps --suite together --out results/qualify-programs)

# make test: lint, the host unit tests, the series check, then the gate with the selftest in its side lane.
test: lint unit series-check
	@$(MAKE) --no-print-directory gate GATE_WITH_SELFTEST=1

qualify: venv
	$(PY) -m compileall -q src scenarios >/dev/null
	@$(call record,qualify,$(LOOPQUAL) qualify --out results/qualify)

# The rules x sources table (issue 3): every source (0.15.4 is upstream's newest), every
# suite, the default kernel, in two guests at once (COMPARE_JOBS; one host core each under TCG);
# then every source on the sanitizer kernel as the gate's sanitizer lane runs patched (issue 12:
# what each stock source triggers there; informational). One table of both.
COMPARE_JOBS ?= 2
COMPARE_MODULES := --module debian-0.12.7 --module debian-0.13.2 --module debian-0.15.0 \
	--module debian-0.15.4 --module patched
compare: venv
	$(PY) -m compileall -q src scenarios >/dev/null
	@# the table is printed whatever the runs' verdicts; then make fails if a run did
	@$(call keep_code,compare,$(LOOPQUAL) qualify --jobs $(COMPARE_JOBS) $(COMPARE_MODULES) \
		--suite contract --suite compliance --suite compliance-sid --suite clients --suite browser \
		--suite apps --suite together --suite delivery --suite delivery-buf8 --suite regressions \
		--out results/compare); \
	$(call keep_code,compare-sanitizer,$(LOOPQUAL) qualify --jobs $(COMPARE_JOBS) $(SANITIZER) \
		$(COMPARE_MODULES) --out results/compare-sanitizer); \
	$(LOOPQUAL) compare results/compare results/compare-sanitizer; \
	for step in compare compare-sanitizer; do code=$$(cat $(EXIT_CODES)/$$step); \
	  [ "$$code" = 0 ] || exit $$code; done

# Delivery for every source (issue 24), the part of `make compare` that judges S7-S9 and D1-D4:
# suites delivery (ec0, ec1), delivery-buf8 (ec1-buf8) and clients (ec0, ec1: the real programs'
# frames counted by content) on the default kernel, all five sources, then their rules table.
compare-delivery: venv
	$(PY) -m compileall -q src scenarios >/dev/null
	@$(call keep_code,compare-delivery,$(LOOPQUAL) qualify --jobs $(COMPARE_JOBS) \
		$(COMPARE_MODULES) --suite delivery --suite delivery-buf8 --suite clients \
		--out results/compare-delivery); \
	$(LOOPQUAL) compare results/compare-delivery; exit $$(cat $(EXIT_CODES)/compare-delivery)

# Upstream's bug reports for every source (issue 25): suite regressions in cells ec0 and ec1
# of the default kernel, all five sources; the rules table, then reports x sources
# (reproduces / fixed).
compare-regressions: venv
	$(PY) -m compileall -q src scenarios >/dev/null
	@$(call keep_code,compare-regressions,$(LOOPQUAL) qualify --jobs $(COMPARE_JOBS) \
		$(COMPARE_MODULES) --suite regressions --out results/compare-regressions); \
	$(LOOPQUAL) compare results/compare-regressions; exit $$(cat $(EXIT_CODES)/compare-regressions)

# The real programs for every source (issue 10), the part of `make compare` that judges K3,
# K4, K5 and K6 with OBS Studio, Chromium, Firefox ESR and ffmpeg: cell ec1 (the browsers need
# exclusive_caps=1) of the default kernel, suites browser, apps and together, all five sources,
# then their rules x sources table (patched must pass; the stock sources' results inform).
compare-programs: venv
	$(PY) -m compileall -q src scenarios >/dev/null
	@$(call keep_code,compare-programs,$(LOOPQUAL) qualify --jobs $(COMPARE_JOBS) \
		$(COMPARE_MODULES) --params ec1 --suite browser --suite apps --suite together \
		--out results/compare-programs); \
	$(LOOPQUAL) compare results/compare-programs; exit $$(cat $(EXIT_CODES)/compare-programs)

bench: venv
	$(LOOPQUAL) bench --out results/bench

# Real programs through the device (ffmpeg, GStreamer and OBS Studio's virtual camera as
# writers; ffmpeg, GStreamer, headless Chromium and Firefox ESR as readers), stock 0.13.2 and
# 0.15.4 against patched in one boot: figures and ratios, no verdict.
bench-programs: venv
	$(LOOPQUAL) bench --programs --pairs all --out results/bench-programs

clean:
	rm -rf results
