"""Main's output kept beside a supervised job, and printed when it never reached mpiexec
(clustervm/output.py; docs/status.md item 8: a result line lost when PRRTE ended a job
right after main)."""
import io
import os
import subprocess
import sys

import pytest

from clustervm import output
from conftest import run_job


@pytest.mark.parametrize(("seen", "kept", "missing"), [
    (b"a\nX\nhits=1\nb\n", b"a\nhits=1\n", b""),                  # all there, among others
    (b"a\nX\nhi", b"a\nhits=1\n", b"hits=1\n"),                    # the last line cut short
    (b"", b"a\nhits=1\n", b"a\nhits=1\n"),                         # nothing arrived
    (b"[1,0]<stdout>: a\n[1,0]<stdout>: b\n", b"a\nb\n", b""),    # --tag-output
    (b"a\nrank 3 sa", b"a\nb\nc\n", b"b\nc\n"),
    (b"a\nc\n", b"a\nb\nc\n", b""),      # b not found (cut up by another rank): c still counts
    (b"x\n", b"", b""),
    (b"a\nb", b"a\nb", b""),                                       # no newline at the end
])
def test_undelivered_is_the_end_of_mains_output_not_seen(seen, kept, missing):
    assert output.undelivered(seen, kept) == missing


def test_undelivered_looks_at_the_last_lines_only():
    kept = b"".join(b"line %d\n" % i for i in range(1000))
    assert output.undelivered(b"", kept) == b"".join(b"line %d\n" % i for i in range(744, 1000))


def relayed(chunks: list[bytes], token: bytes = b"TOKEN") -> tuple[bytes, bool]:
    """What a relay watching for ``token`` passes on of ``chunks`` (each its own read)."""
    relay = output.Relay(io.BytesIO())
    relay.watch_for(token)
    out = b"".join(relay._filter(c, False) for c in chunks) + relay._filter(b"", True)
    return out, relay.found.is_set()


@pytest.mark.parametrize(("chunks", "passed", "found"), [
    ([b"a\nTOKEN\nb\n"], b"a\nb\n", True),
    ([b"a\n[1,0]<stderr>:TO", b"KEN\nb\n"], b"a\nb\n", True),     # --tag-output, cut up
    ([b"a\nTOKEN", b" still its line", b"\nb\n"], b"a\nb\n", True),
    ([b"a\nno token\npart", b"ial"], b"a\nno token\npartial", False),   # all at the end
    ([b"TOKEN\n", b"TOKEN\n"], b"TOKEN\n", True),                  # only the first one
    ([b"x" * (output._HELD_MAX + 1)], b"x" * (output._HELD_MAX + 1), False),   # no line end
])
def test_a_relay_takes_out_the_first_line_holding_its_token(chunks, passed, found):
    assert relayed(chunks) == (passed, found)


def test_tee_writes_both_and_keeps_bytes_as_the_stream_encodes(tmp_path):
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with open(tmp_path / "kept", "wb") as f:
        tee = output.Tee(stream, f)
        print("pi=3.14 é", file=tee)
        tee.sync()
    stream.seek(0)
    assert stream.read() == "pi=3.14 é\n"
    assert (tmp_path / "kept").read_bytes() == "pi=3.14 é\n".encode()
    assert tee.encoding == "utf-8" and tee.writable()


def test_relay_copies_a_pipe_and_remembers_it():
    r, w = os.pipe()
    sink = io.BytesIO()
    relay = output.Relay(sink)
    relay.start(os.fdopen(r, "rb"))
    os.write(w, b"hello\n")
    os.write(w, b"world\n")
    os.close(w)
    relay.join(5.0)
    assert sink.getvalue() == b"hello\nworld\n" == bytes(relay.seen)
    assert relay.complete


def test_recover_prints_what_never_arrived_and_says_so(tmp_path, capsys):
    (tmp_path / "main.stdout").write_bytes(b"start\nhits=42\n")
    (tmp_path / "main.stderr").write_bytes(b"report\n")
    out, err = io.BytesIO(), io.BytesIO()
    relays = {"stdout": output.Relay(out), "stderr": output.Relay(err)}
    relays["stdout"].seen += b"start\n"
    relays["stderr"].seen += b"PRRTE says\nreport\n"
    output.recover(str(tmp_path), relays)
    assert out.getvalue() == b"hits=42\n"
    assert err.getvalue() == b""
    said = capsys.readouterr().err
    assert "1 line(s) of main's stdout had not reached mpiexec" in said, said
    assert str(tmp_path / "main.stdout") in said


@pytest.mark.mpi
def test_a_supervised_job_prints_a_result_line_that_never_reached_mpiexec(tmp_path):
    """Rank 0's last line is lost on its way (its stdout points at /dev/null when it
    prints it, as if the daemon that carries it were gone): the supervisor prints it
    from what rank 0 kept, once, after the lines that did arrive."""
    app = tmp_path / "lost_line.py"
    app.write_text(
        "import os, sys\n"
        "def main(vm):\n"
        "    print('first line', flush=True)\n"
        "    sys.stdout.flush()\n"
        "    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
        "    print('result=42', flush=True)\n")
    r = run_job([str(app)], n=2, timeout=60,
                run_args=["--restarts", "1", "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.rc == 0, r.err
    assert r.out.splitlines() == ["first line", "result=42"], r.out
    assert "1 line(s) of main's stdout had not reached mpiexec" in r.err, r.err
    assert (tmp_path / "ck" / "main.stdout").read_text() == "first line\nresult=42\n"


@pytest.mark.mpi
def test_a_supervised_job_prints_its_output_once(tmp_path):
    r = run_job(["examples/hello.py"], n=3, timeout=60,
                run_args=["--restarts", "1", "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.rc == 0, r.err
    assert "had not reached mpiexec" not in r.err, r.err
    lines = r.out.splitlines()
    assert lines and len(lines) == len(set(lines)), r.out
    assert (tmp_path / "ck" / "main.stdout").read_text().splitlines() == lines
