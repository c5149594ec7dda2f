"""secrets.env: KEY=VALUE lines, each value verbatim to the end of its line."""
import pytest

from tenantkit.act.secrets import read_env_file, write_env_file
from tenantkit.model import ConfigError

HOSTILE = ['p$ss #word"\'`\\', "#starts with a hash", "a=b=c", "${HOME}", "'quoted'", '"quoted"',
           "trailing\\", "ünïcödé €", "$(id)", "x" * 500]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_round_trip_exactly(tmp_path, value):
    path = tmp_path / "secrets.env"
    write_env_file(path, {"TENANT_DB_PASSWORD": value, "TENANT_SECRET_KEY": "k"}, "test")
    assert read_env_file(path) == {"TENANT_DB_PASSWORD": value, "TENANT_SECRET_KEY": "k"}


@pytest.mark.parametrize("value", [
    "pw\nLD_PRELOAD=/tmp/x.so", "pw\r", "pw\x00", "pw\x1b[0m", "pw\x7f", "pw\x85", "pw\u2028x",
    " leading", "trailing ", "tab\t", "\tx",
])
def test_a_value_a_line_reader_could_misread_is_refused_and_nothing_written(tmp_path, value):
    path = tmp_path / "secrets.env"
    with pytest.raises(ConfigError) as error:
        write_env_file(path, {"TENANT_DB_PASSWORD": value}, "test")
    message = str(error.value)
    assert "TENANT_DB_PASSWORD" in message and "\n" not in message
    assert value.strip() not in message  # a secret is never shown
    assert not path.exists()


@pytest.mark.parametrize("key", ["lower", "1ST", "A-B", "A B", "", "A\nB", "É"])
def test_a_key_that_is_not_an_env_name_is_refused(tmp_path, key):
    with pytest.raises(ConfigError, match="not a variable name"):
        write_env_file(tmp_path / "secrets.env", {key: "v"}, "test")
    assert not (tmp_path / "secrets.env").exists()


def test_a_comment_cannot_add_a_line(tmp_path):
    with pytest.raises(ConfigError):
        write_env_file(tmp_path / "secrets.env", {"A": "v"}, "imported from /x\nLD_PRELOAD=/tmp/x.so")


def test_the_reader_keeps_values_verbatim_and_skips_comments(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("# comment\n\nA= spaced \nB=x # not a comment\r\nC=\nA=second\n")
    assert read_env_file(path) == {"A": " spaced ", "B": "x # not a comment", "C": ""}
