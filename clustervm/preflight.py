"""Checks ``clustervm run`` makes before it starts mpiexec.

What can be known without MPI is checked here, so that a job that cannot
start fails at once with one clear line instead of after MPI_Init on every
rank: the application file exists, parses and binds ``main``; the checkpoint
directory can be written; a journal to resume is there and readable.
Nothing of the application runs here (it is parsed, not imported).
"""
from __future__ import annotations

import ast
import os
import tempfile

from .errors import CheckpointError, ConfigError

__all__ = ["check_app", "check_checkpoint_dir", "check_resume"]


def check_app(path: str) -> None:
    """The file exists, is Python, and binds the name ``main`` at its top level."""
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise ConfigError(f"application file {path!r} {what}; give the path of a Python file "
                          f"that defines main(vm)")
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: {exc.msg}; fix the syntax error "
                          f"and run again") from None
    except ValueError as exc:   # null bytes
        raise ConfigError(f"{path} is not a Python source file ({exc})") from None
    if not _binds_main(tree.body):
        raise ConfigError(f"{path} defines no main(vm) function; add `def main(vm): ...` "
                          f"(it runs on the coordinator)")


def _binds_main(body: list[ast.stmt]) -> bool:
    """Does a top-level statement (also inside if/try/with) bind ``main``?"""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "main":
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if any(isinstance(n, ast.Name) and n.id == "main" for n in ast.walk(target)):
                    return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == "main":
                    return True
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            if any(_binds_main(b) for b in blocks):
                return True
        elif isinstance(node, ast.Expr) and _calls_globals_update(node.value):
            return True   # globals()[...] = / globals().update(...): cannot know, accept
    return False


def _calls_globals_update(expr: ast.expr) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
               and n.func.id == "globals" for n in ast.walk(expr))


def check_checkpoint_dir(directory: str) -> None:
    """The checkpoint directory exists (or can be made) and a file can be written in it."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the checkpoint directory {directory}: "
                          f"{exc.strerror}; choose a directory you can write") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".clustervm-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write in the checkpoint directory {directory}: "
                          f"{exc.strerror}; choose a directory you can write") from None


def check_resume(directory: str, or_start: bool) -> bool:
    """Is there a readable journal to resume in ``directory``? False (start fresh) only
    with ``or_start``; without it, a missing journal is an error. A corrupt one always is."""
    from .journal import JOURNAL_NAME, Journal   # only a resumed job reads a journal here
    if not os.path.isdir(directory):
        if or_start:
            return False
        raise ConfigError(f"--resume {directory}: no such directory; give the checkpoint "
                          f"directory of the job to resume")
    if not os.path.exists(os.path.join(directory, JOURNAL_NAME)):
        if or_start:
            return False
        raise ConfigError(f"--resume {directory}: no journal there ({JOURNAL_NAME} missing), "
                          f"so there is nothing to resume; start the job with --checkpoint-dir "
                          f"{directory}, or use --resume-or-start {directory}")
    try:
        with Journal(directory, fsync=False) as journal:
            for _ in journal.replay():
                pass
    except CheckpointError as exc:
        raise ConfigError(f"--resume {directory}: {exc}") from None
    return True
