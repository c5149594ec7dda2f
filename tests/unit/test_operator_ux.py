"""Small parts of the operator's experience that need no engine: how durations, variables,
hints and progress read."""
import sys

import pytest

from tenantkit import cli, progress


@pytest.mark.parametrize("seconds, shown", [(None, "-"), (0, "0s"), (59, "59s"), (686, "11m26s"),
                                            (3600 * 3 + 300, "3h05m"), (86400 * 2 + 3600 * 4 + 5, "2d4h")])
def test_uptime_reads_as_people_read_it(seconds, shown):
    assert cli.duration(seconds) == shown


def test_environment_takes_values_given_or_from_here(monkeypatch):
    monkeypatch.setenv("FROM_HERE", "v1=still")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    assert cli.environment(["A=1", "EMPTY=", "FROM_HERE", "UNSET_HERE"]) == {"A": "1", "EMPTY": "", "FROM_HERE": "v1=still"}
    with pytest.raises(Exception, match="NAME=VALUE"):
        cli.environment(["=oops"])


def test_hints_name_the_command_as_it_was_typed(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["tools/tenant", "new", "x"])
    monkeypatch.setattr(cli.shutil, "which", lambda name: None)
    assert cli.invoked_as() == "tools/tenant"
    installed = tmp_path / "tenant"
    installed.write_text("")
    monkeypatch.setattr(sys, "argv", [str(installed)])
    monkeypatch.setattr(cli.shutil, "which", lambda name: str(installed))
    assert cli.invoked_as() == "tenant"  # what PATH finds is typed as `tenant`
    monkeypatch.setattr(sys, "argv", ["tenant"])
    assert cli.invoked_as() == "tenant"


def test_progress_without_a_terminal_is_one_line_per_tenant():
    progress.use_bars(False)
    lines = []
    with progress.track("migrating", 3, lines.append) as bar:
        bar.advance("a", "ok", 0.5)
        bar.advance("b", "failed", 1.25, failed=True)
        bar.advance("c", "healthy", line="c is healthy")
    assert lines == ["[1/3] a: ok (0.50s)", "[2/3] b: failed (1.25s)", "c is healthy"]
    assert (bar.done, bar.failed, bar.bar) == (3, 1, False)


def test_progress_on_a_terminal_is_a_bar_with_counts_and_failures(capsys):
    progress.use_bars(True)
    try:
        lines = []
        with progress.track("deploying 1.0", 2, lines.append) as bar:
            assert bar.bar
            bar.advance("a", "ok", 1.0)
            bar.advance("b", "failed", 2.0, failed=True)
            progress.echo("· a message above the bar")
        assert lines == ["b: failed"]  # only failures are spelled out beside the bar
        err = capsys.readouterr().err
        assert "deploying 1.0, 1 failed" in err and "2/2" in err and "a message above the bar" in err
    finally:
        progress.use_bars(False)
