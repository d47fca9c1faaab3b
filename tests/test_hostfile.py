"""Hostfile parsing (Open MPI and MPICH syntax), writing, and every error path."""
from __future__ import annotations

from pathlib import Path

import pytest

from clustervm.errors import HostfileError
from clustervm.hostfile import Host, hostfile_lines, needs_rewrite, parse_hostfile

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "hosts") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_openmpi_syntax(tmp_path):
    path = write(tmp_path, "a\nb slots=4\nc slots=2 max_slots=8\nd slots=1 max-slots=3\n")
    assert parse_hostfile(path) == [Host("a", 1), Host("b", 4), Host("c", 2, 8), Host("d", 1, 3)]


def test_mpich_syntax(tmp_path):
    path = write(tmp_path, "node01:4\nnode02\nnode03:1\n")
    assert parse_hostfile(path) == [Host("node01", 4), Host("node02", 1), Host("node03", 1)]


def test_comments_blank_lines_and_spacing(tmp_path):
    text = ("# cluster\n\n   \n"
            "  a   slots=2   # trailing comment\n"
            "\tb:3#no space before the comment\n"
            "c slots = 5\n"
            "user@d.example.org\n"
            "# the end\n")
    assert parse_hostfile(write(tmp_path, text)) == [
        Host("a", 2), Host("b", 3), Host("c", 5), Host("user@d.example.org", 1)]


def test_crlf_line_ends(tmp_path):
    path = tmp_path / "hosts"
    path.write_bytes(b"a slots=2\r\nb:3\r\n")
    assert parse_hostfile(path) == [Host("a", 2), Host("b", 3)]


def test_duplicate_hosts_add_their_slots(tmp_path):
    text = "a slots=2\nb\na:3\nb\na\n"
    assert parse_hostfile(write(tmp_path, text)) == [Host("a", 6), Host("b", 2)]


def test_duplicate_max_slots_add_up_or_become_unlimited(tmp_path):
    both = write(tmp_path, "a slots=1 max_slots=2\na slots=2 max_slots=3\n", "both")
    assert parse_hostfile(both) == [Host("a", 3, 5)]
    one = write(tmp_path, "a slots=1 max_slots=2\na slots=2\n", "one")
    assert parse_hostfile(one) == [Host("a", 3, None)]


def test_keywords_are_case_insensitive(tmp_path):
    assert parse_hostfile(write(tmp_path, "a SLOTS=2 Max_Slots=4\n")) == [Host("a", 2, 4)]


def test_accepts_path_as_str(tmp_path):
    assert parse_hostfile(str(write(tmp_path, "a:2\n"))) == [Host("a", 2)]


@pytest.mark.parametrize("name", ["localhost", "openmpi.example", "mpich.example"])
def test_shipped_hostfiles_parse(name):
    hosts = parse_hostfile(ROOT / "hostfiles" / name)
    assert hosts and all(h.slots >= 1 for h in hosts)


def test_shipped_localhost_has_four_slots():
    assert parse_hostfile(ROOT / "hostfiles" / "localhost") == [Host("localhost", 4)]


# ------------------------------------------------------------------ writing

HOSTS = [Host("a", 2), Host("b", 1, 4)]


def test_write_openmpi():
    assert hostfile_lines(HOSTS, "openmpi") == "a slots=2\nb slots=1 max_slots=4\n"


def test_write_mpich_drops_max_slots():
    assert hostfile_lines(HOSTS, "mpich") == "a:2\nb:1\n"


@pytest.mark.parametrize("syntax", ["openmpi", "mpich"])
def test_round_trip(tmp_path, syntax):
    path = write(tmp_path, hostfile_lines(HOSTS, syntax))
    expect = HOSTS if syntax == "openmpi" else [Host("a", 2), Host("b", 1)]
    assert parse_hostfile(path) == expect


def test_write_unknown_syntax():
    with pytest.raises(ValueError, match="unknown hostfile syntax"):
        hostfile_lines(HOSTS, "slurm")


@pytest.mark.parametrize("text,syntax,expected", [
    ("a slots=2\nb\n", "openmpi", False),
    ("a slots=2\na slots=1\n", "openmpi", True),   # Open MPI 5 rejects repeated slots=
    ("a:2\n", "openmpi", True),                     # Open MPI takes "a:2" for a host name
    ("a:2\nb\n", "mpich", False),
    ("a slots=2\n", "mpich", True),
    ("a\na\n", "mpich", False),
])
def test_needs_rewrite(tmp_path, text, syntax, expected):
    assert needs_rewrite(write(tmp_path, text), syntax) is expected


# ------------------------------------------------------------------- errors

@pytest.mark.parametrize("text,line,reason", [
    ("a slots=2\nb cores=4\n", 2, "unknown keyword 'cores'"),
    ("a slots=0\n", 1, "slots='0' is not a positive integer"),
    ("a slots=-2\n", 1, "slots='-2' is not a positive integer"),
    ("a slots=two\n", 1, "slots='two' is not a positive integer"),
    ("a slots=\n", 1, "slots='' is not a positive integer"),
    ("a slots=1.5\n", 1, "not a positive integer"),
    ("\n# c\na slots=4 max_slots=2\n", 3, "max_slots=2 is less than slots=4"),
    ("a max-slots=0 slots=1\n", 1, "max-slots='0' is not a positive integer"),
    ("a max_slots=4\n", 1, "max_slots without slots"),
    ("a slots=2 slots=3\n", 1, "slots given twice"),
    ("a slots=2 4\n", 1, "unexpected '4' after host 'a'"),
    ("a b\n", 1, "unexpected 'b' after host 'a'"),
    ("a:4 slots=2\n", 1, "unexpected 'slots=2' after 'a:4'"),
    ("a:4 b:4\n", 1, "unexpected 'b:4' after 'a:4'"),
    ("a:\n", 1, "'' in 'a:' is not a positive number of slots"),
    ("a:0\n", 1, "'0' in 'a:0' is not a positive number of slots"),
    ("a:x\n", 1, "'x' in 'a:x' is not a positive number of slots"),
    ("a:2:ib0\n", 1, "'2:ib0' in 'a:2:ib0' is not a positive number of slots"),
    (":4\n", 1, "no host name"),
    ("slots=4\n", 1, "the host name comes first"),
    ("a,b slots=2\n", 1, "'a,b' is not a valid host name"),
])
def test_errors_name_file_line_and_reason(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(HostfileError) as info:
        parse_hostfile(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert reason in message
    # Every message says what to do, after the reason.
    assert any(w in message for w in ("write", "use", "give", "add", "raise", "start", "check"))


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n  # comments\n\n"])
def test_no_hosts(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(HostfileError, match=r"no hosts in the hostfile.*add one host per line"):
        parse_hostfile(path)
    with pytest.raises(HostfileError) as info:
        parse_hostfile(path)
    assert str(info.value).startswith(f"{path}:")


def test_missing_file(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(HostfileError, match="hostfile not found; check the path") as info:
        parse_hostfile(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unreadable_file(tmp_path):
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HostfileError, match="cannot read the hostfile") as info:
        parse_hostfile(path)
    assert str(info.value).startswith(f"{path}: ")


def test_directory_is_not_a_hostfile(tmp_path):
    with pytest.raises(HostfileError, match="cannot read the hostfile"):
        parse_hostfile(tmp_path)


def test_hostfile_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        parse_hostfile(write(tmp_path, "a slots=x\n"))
