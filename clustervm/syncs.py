"""The job directory's syncs, and going back to the last one after a power cut.

A job run with ``--checkpoint-dir`` writes its checkpoint files and its journal
records to the OS as it goes: they survive the death of any process at once,
the whole job's included, which is what ``--resume`` is for. What the OS has not
yet put on the disk does not survive a power cut or a crash of the machine, and
it reaches the disk in no particular order: a newer checkpoint of one task may
be there while an older one of another, whose messages it no longer keeps, is
not. So every ``CLUSTERVM_CHECKPOINT_SYNC_S`` seconds the coordinator's writer
syncs the files (:meth:`CheckpointStore.sync`) and appends a ``synced`` record
to the journal naming the versions that sync made durable, with the machine's
boot id; those files are not rewritten until the next record is durable.

A resume that finds the boot id changed since the last ``synced`` record (the
machine restarted, or the directory is read from another one) goes back to
that sync (:func:`back_to_last_sync`): the journal records after it are cut off
and only the versions it names are kept. That is the job as it was at that
moment, which a resume finishes exactly, as it would after the job was killed.
With ``CLUSTERVM_CHECKPOINT_SYNC_S=0`` every checkpoint is synced before it
counts and the record says so (``strict``): nothing is given up.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

from . import procs, wire
from .checkpoint import CheckpointStore
from .journal import Journal

__all__ = ["record_sync", "back_to_last_sync", "SYNCED"]

log = logging.getLogger(__name__)

SYNCED = "synced"       #: the journal record's kind


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    return procs.boot_id()      # read once: it does not change while this process runs


def record_sync(journal: Journal, kept: dict[str, list[int]], gone: list[str], *,
                full: bool = False, strict: bool = False, boot: str | None = None) -> None:
    """Append a durable ``synced`` record: the versions ``kept`` (key -> seqs) changed
    since the last one (``full``: every key's), the keys ``gone``; ``strict``: from
    here on every checkpoint is synced before it counts."""
    info = {"boot": _boot_id() if boot is None else boot, "full": full,
            "strict": strict, "kept": kept, "gone": gone}
    payload, bufs = wire.dumps(info)
    journal.append(SYNCED, "", [payload, *bufs])
    journal.sync()


def back_to_last_sync(journal: Journal, store: CheckpointStore,
                      boot: str | None = None) -> str | None:
    """On resume: if this machine restarted since the journal's last ``synced`` record
    (``boot``, default this machine's, is not the record's), go back to it: cut the
    journal's later records off and keep only the checkpoint versions it names. Returns
    what was done (for the log and the report), or None if nothing had to be."""
    info: dict[str, Any] | None = None
    pins: dict[str, set[int]] = {}
    for rec in journal.replay(kinds=(SYNCED,)):     # the results' frames are not read
        info = wire.loads(rec.frames[0], rec.frames[1:])
        if info["full"]:
            pins = {}
        for key, seqs in info["kept"].items():
            pins[key] = set(seqs)
        for key in info["gone"]:
            pins.pop(key, None)
    now = _boot_id() if boot is None else boot
    if info is None or info["strict"] or (now and info["boot"] == now):
        return None     # written by an older clustervm, synced at every write, or no restart
    records = journal.cut_after_last(SYNCED)
    versions = store.restrict(pins)
    what = (f"the job directory was last synced on another boot (this machine restarted "
            f"since, or it is another machine): a power cut may have lost what was written "
            f"after that sync, so the job goes back to it; {records} journal record(s) and "
            f"{versions} checkpoint version(s) after it given up")
    log.warning("resume: %s", what)
    return what
