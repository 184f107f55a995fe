"""Bad input on the command line: one clear line on stderr and exit 2, never a traceback."""

import subprocess
import sys

import pytest

CASES = [
    (["qualify", "--kernel", "debian-5.10"], "unknown kernel 'debian-5.10'"),
    (["qualify", "--module", "debian-9.9"], "unknown module source 'debian-9.9'"),
    (["qualify", "--params", "ec9"], "unknown parameter set 'ec9'"),
    (["qualify", "--params", "exclusive_caps=1,bogus=2"], "unknown module parameter 'bogus'"),
    (["qualify", "--suite", "nosuite"], "unknown suite 'nosuite'"),
    (["build", "--kernel", "nokernel"], "unknown kernel 'nokernel'"),
    (["report", "/nonexistent"], "no results.json"),
    (["qualify", "--kernel", "debian-6.1", "--suite", "browser:debian-6.12"],
     "kernel 'debian-6.12' is not in this run"),
]


@pytest.mark.parametrize("argv,message", CASES)
def test_bad_input_exits_2_with_one_line(argv, message):
    proc = subprocess.run([sys.executable, "-m", "loopqual.cli", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_list_names_what_it_knows():
    proc = subprocess.run([sys.executable, "-m", "loopqual.cli", "list"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for name in ("debian-6.1", "debian-6.12", "debian-0.12.7", "patched", "ec1-open2", "compliance"):
        assert name in proc.stdout
    # the tools: each with its packages and suite, and what its root holds (or that none is made)
    tools = proc.stdout.split("\nTools (", 1)[1].splitlines()[1:]
    assert tools[0].split()[:4] == ["sid", "v4l-utils", "from", "sid:"]
    assert tools[1].strip().startswith(("root: cached (v4l-utils ", "root: not made yet"))
    assert "compliance-sid " in proc.stdout and "(tool sid)" in proc.stdout


def test_sigterm_outside_the_guest_stage_is_one_line_and_exit_2():
    """A CI job cancelled while loopqual builds (before any guest): one line, exit 2."""
    code = ("import os, signal, sys, time\n"
            "from loopqual import cli\n"
            "def slow(args, argv):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "cli._dispatch = slow\n"
            "sys.exit(cli.main(['list']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "loopqual: interrupted by SIGTERM"


def test_an_internal_error_is_one_line_and_its_traceback_kept_in_a_file(monkeypatch, capsys):
    """A bug (here: a dispatch that raises) never shows the user a traceback; the file has it."""
    from pathlib import Path

    from loopqual import cli

    def broken(_args, _argv):
        raise ImportError("cannot import name 'rules' from 'loopqual'")

    monkeypatch.setattr(cli, "_dispatch", broken)
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loopqual: internal error: ImportError: cannot import name 'rules'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    kept = Path(err.split("its traceback is in ")[1].split(";")[0])
    assert "Traceback" in kept.read_text() and "broken" in kept.read_text()
    kept.unlink()


def test_every_subcommand_has_its_handler():
    from loopqual import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.HANDLERS)
