"""What the command line must do with bad input: one line on stderr, exit 2, no traceback."""

import re

from loopqual import cli


def one_line_exit_2(capsys, argv, pattern):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
