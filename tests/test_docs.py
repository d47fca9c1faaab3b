"""The documentation: the site builds with warnings as errors, and every code block runs.

How a fenced block of ``docs/*.md`` is treated (docs/about-docs.md says the same for
authors). The HTML comment, if any, is on the line right before the opening fence:

* ```` ```python ```` whose first line is ``# file: NAME`` is written to the page's
  working directory as NAME; a later ```` ```sh ```` block of the page must use it.
* ```` ```python ```` that defines ``main(vm)`` (and no ``# file:``) runs as an app with
  ``clustervm run -n 3`` (conftest's run_job, with a timeout).
* any other ```` ```python ```` runs with plain ``python`` in the working directory.
* ```` ```sh ```` runs as one ``bash -e`` script in the page's working directory, with
  the venv's ``bin`` first on PATH (so ``clustervm``, ``python`` and ``mpiexec`` are the
  venv's) and Open MPI's run-as-root and oversubscribe variables set, bounded.
* ```` ```text ```` is output or a listing and is not run. ``<!-- output -->`` before
  it makes it expected output: its non-empty lines must appear, in order, among the
  lines of the stdout of the block run just before it; ``...`` in a line matches
  anything (paths, pids).
* ``<!-- no-run: reason -->`` before a python or sh block skips it; the reason is
  required (e.g. it needs a cluster, Slurm, or root and a firewall).
* Fences without a language, or with another one, are errors: say what the block is.

A page's blocks run in order in one temporary directory (a test per page), so a
``# file:`` written by one block is there for the sh blocks after it.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clustervm.launcher import PRTE_START_FAILED
from conftest import PY, ROOT, job_env, run_job

DOCS = ROOT / "docs"
VENV_BIN = Path(PY).parent
BLOCK_TIMEOUT = 90.0
RUN_LANGS = {"python", "sh"}
LANGS = RUN_LANGS | {"text"}
_FENCE = re.compile(r"^(\s*)```(.*)$")
_MARK = re.compile(r"^\s*<!--\s*(no-run|output)\b\s*:?\s*(.*?)\s*-->\s*$")
_FILE = re.compile(r"^#\s*file:\s*(\S+)\s*$")
_MAIN = re.compile(r"^def main\(vm\b", re.M)


@dataclasses.dataclass
class Block:
    page: str
    line: int            # of the opening fence, 1-based
    lang: str
    code: str
    mark: str | None     # "no-run", "output" or None
    reason: str

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"

    @property
    def filename(self) -> str | None:
        first = self.code.splitlines()[0] if self.code else ""
        m = _FILE.match(first)
        return m.group(1) if m else None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the marker comment before each."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).strip()
        body = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        mark = _MARK.match(lines[i - 1]) if i > 0 else None
        out.append(Block(path.name, i + 1, lang, "\n".join(body) + "\n",
                         mark.group(1) if mark else None, mark.group(2) if mark else ""))
        i = j + 1
    return out


PAGES = sorted(p.name for p in DOCS.glob("*.md"))


def test_the_pages_have_code_blocks():
    """The harness below finds what it should (guards against a parser that finds nothing)."""
    found = [b for page in PAGES for b in blocks(DOCS / page)]
    assert sum(b.lang == "python" for b in found) >= 5
    assert sum(b.lang == "sh" and b.mark is None for b in found) >= 3


@pytest.mark.parametrize("page", PAGES)
def test_blocks_follow_the_convention(page):
    """Every fence says what it is; skipped blocks say why; files written are used."""
    errors = []
    page_blocks = blocks(DOCS / page)
    for k, b in enumerate(page_blocks):
        if b.lang not in LANGS:
            errors.append(f"{b.where}: fence language {b.lang!r}: use python, sh or text "
                          f"(output and listings)")
        if b.mark == "no-run" and not b.reason:
            errors.append(f"{b.where}: <!-- no-run --> needs a reason: <!-- no-run: why -->")
        if b.mark == "no-run" and b.lang not in RUN_LANGS:
            errors.append(f"{b.where}: <!-- no-run --> on a {b.lang!r} block, which never runs")
        if b.mark == "output" and b.lang != "text":
            errors.append(f"{b.where}: <!-- output --> goes before a ```text block")
        if b.lang == "python" and b.filename and b.mark != "no-run":
            later = [c for c in page_blocks[k + 1:] if c.lang == "sh" and c.mark is None]
            if not any(b.filename in c.code for c in later):
                errors.append(f"{b.where}: {b.filename} is written but no later sh block of "
                              f"the page runs it")
    assert not errors, "\n".join(errors)


def _sh_env() -> dict:
    env = job_env({"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                   "VIRTUAL_ENV": str(VENV_BIN.parent),
                   "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_btl": "^ofi",
                   "PYTHONPATH": str(ROOT)})
    for name in ("CLUSTERVM_LOG_LEVEL", "CLUSTERVM_SPIN_MS", "CLUSTERVM_PROBE_TIMEOUT_S"):
        if name not in os.environ:
            env.pop(name, None)          # job_env's defaults: not in what the pages show
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> tuple[int, str, str]:
    """Run a command in its own session, bounded; on timeout its whole session is killed."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_sh_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} ran past {BLOCK_TIMEOUT:.0f} s (killed)\n{out}\n{err}")
    return proc.returncode, out, err


def _line_matcher(line: str):
    """An expected output line; ``...`` in it stands for anything (paths, pids, times)."""
    if "..." not in line:
        return lambda have: have == line
    pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")) + "$")
    return lambda have: pattern.match(have) is not None


def _expect(expected: Block, out: str, previous: Block | None) -> None:
    want = [ln.strip() for ln in expected.code.splitlines() if ln.strip()]
    have = [ln.strip() for ln in out.splitlines()]
    pos = 0
    for line in want:
        match = _line_matcher(line)
        hit = next((i for i in range(pos, len(have)) if match(have[i])), None)
        if hit is None:
            src = previous.where if previous else "nothing"
            pytest.fail(f"{expected.where}: expected output line {line!r} not printed (in "
                        f"order) by the block at {src}; it printed:\n{out}")
        pos = hit + 1


@pytest.mark.mpi
@pytest.mark.parametrize("page", [p for p in PAGES
                                  if any(b.lang in RUN_LANGS and b.mark != "no-run"
                                         for b in blocks(DOCS / p))])
def test_code_blocks_run(page, tmp_path):
    """Run the page's blocks in order (see the module docstring for the rules)."""
    out, last = "", None
    for b in blocks(DOCS / page):
        if b.mark == "no-run":
            continue
        if b.lang == "text":
            if b.mark == "output":
                _expect(b, out, last)
            continue
        last = b
        if b.lang == "python" and b.filename:
            (tmp_path / b.filename).write_text(b.code)
            out = ""
        elif b.lang == "python" and _MAIN.search(b.code):
            app = tmp_path / f"block_{b.line}.py"
            app.write_text(b.code)
            res = run_job([str(app)], n=3, timeout=BLOCK_TIMEOUT)
            assert res.rc == 0, (f"{b.where}: clustervm run -n 3 exited {res.rc}\n"
                                 f"--- stdout ---\n{res.out}\n--- stderr ---\n{res.err}")
            out = res.out
        elif b.lang == "python":
            script = tmp_path / f"block_{b.line}.py"
            script.write_text(b.code)
            rc, out, err = _run([PY, str(script)], tmp_path, b.where)
            assert rc == 0, f"{b.where}: python exited {rc}\n{out}\n{err}"
        elif b.lang == "sh":
            rc, out, err = _run(["bash", "-e", "-c", b.code], tmp_path, b.where)
            if rc == PRTE_START_FAILED and "listener thread failed to start" in err:
                # a bare mpiexec in the block hit Open MPI's own start flake (clustervm
                # run starts such a job again itself; a plain mpiexec does not): once more
                rc, out, err = _run(["bash", "-e", "-c", b.code], tmp_path, b.where)
            assert rc == 0, (f"{b.where}: the sh block exited {rc}\n--- stdout ---\n{out}\n"
                             f"--- stderr ---\n{err}")


def test_mkdocs_build_strict(tmp_path):
    """`make docs` works: mkdocs build --strict (warnings, e.g. a broken link or docstring,
    are errors)."""
    mkdocs = shutil.which("mkdocs", path=str(VENV_BIN)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (make's install "
                    "line does it)")
    try:
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.skip("mkdocstrings is not installed: pip install -e '.[docs]'")
    res = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout}\n{res.stderr}"
    assert (tmp_path / "site" / "api.html").exists()
    api = (tmp_path / "site" / "api.html").read_text()
    for name in ("clustervm.vm.VM", "clustervm.task.TaskContext", "clustervm.futures.ClusterFuture",
                 "clustervm.task.TaskContext.join_group", "clustervm.errors.NodeLostError"):
        assert f'id="{name}"' in api, f"the API reference lost {name}"


def _default_text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, str) else str(value)


def test_configuration_page_lists_every_variable():
    """docs/configuration.md has a row per Config field with its type and default, and
    names every CLUSTERVM_* variable the package reads."""
    from clustervm.config import Config, env_name
    page = (DOCS / "configuration.md").read_text()
    rows = {}
    for line in page.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("CLUSTERVM_"):
            rows[cells[0]] = cells
    for f in dataclasses.fields(Config):
        name = env_name(f.name)
        assert name in rows, f"docs/configuration.md has no row for {name} (Config.{f.name})"
        kind, default = rows[name][1], rows[name][2]
        assert kind == type(f.default).__name__, f"{name}: the page says type {kind}"
        assert default == _default_text(f.default), (
            f"{name}: the page says default {default}, Config says {f.default!r}")
    used = set()
    for path in (ROOT / "clustervm").rglob("*.py"):
        used |= set(re.findall(r"CLUSTERVM_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()))
    named = set(re.findall(r"CLUSTERVM_[A-Z][A-Z0-9_]*[A-Z0-9]", page))
    missing = sorted(used - named)
    assert not missing, f"docs/configuration.md does not describe {missing}"
    unknown = sorted(set(rows) - used - {env_name(f.name) for f in dataclasses.fields(Config)})
    assert not unknown, f"docs/configuration.md lists variables nothing reads: {unknown}"


def test_every_page_is_in_the_nav():
    """A page left out of mkdocs.yml's nav is built but reachable from nowhere."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.M))
    missing = sorted(set(PAGES) - listed)
    assert not missing, f"add {missing} to the nav in mkdocs.yml"
    gone = sorted(listed - set(PAGES))
    assert not gone, f"mkdocs.yml's nav names pages that do not exist: {gone}"


def test_readme_links_to_pages_that_exist():
    """The README's relative links (the doc links among them) point at files in the repo."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local), "the README links no doc page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


PVM_CHECKLIST = Path("/work/shared/reference/pvm-features.md")


def test_from_pvm_names_every_pvm_call():
    """docs/from-pvm.md says what every pvm_* call of the PVM checklist is here (or why not)."""
    if not PVM_CHECKLIST.exists():
        pytest.skip(f"the PVM checklist {PVM_CHECKLIST} is not on this machine")
    calls = set(re.findall(r"\bpvm_[a-z_]+[a-z]", PVM_CHECKLIST.read_text())) - {"pvm_intro"}
    page = (DOCS / "from-pvm.md").read_text()
    missing = sorted(c for c in calls if c not in page)
    assert len(calls) > 60 and not missing, f"docs/from-pvm.md does not mention {missing}"


if __name__ == "__main__":      # list the blocks: python tests/test_docs.py
    for p in PAGES:
        for b in blocks(DOCS / p):
            print(f"{b.where:32} {b.lang:7} {b.mark or '':7} {b.filename or ''} {b.reason}")
    sys.exit(0)
