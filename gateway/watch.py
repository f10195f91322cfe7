"""Noticing edits to files (policies) without inotify: a cheap stat() poll.

Editors replace files (write a temp file, rename it over), so the signature is
(inode, size, mtime): any of them changing counts as an edit.

A caller takes the signatures *before* it reads the files and hands them to the
watcher as `since`: an edit made between that read and the watcher's first look
(a worker still starting, with more to open) is then still an edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

log = logging.getLogger("authgate.watch")

Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def signatures(paths: Sequence[Path]) -> list[Signature]:
    return [signature(p) for p in paths]


async def watch_files(
    paths: Sequence[Path],
    on_change: Callable[[], object],
    interval: float = 0.5,
    since: Sequence[Signature] | None = None,
) -> None:
    """Call `on_change` (and await what it returns, if anything) once per burst of edits
    to any of `paths` made after they had the signatures `since` (default: now), until
    cancelled."""
    if not paths:
        return
    seen = list(since) if since is not None else signatures(paths)
    while True:
        await asyncio.sleep(interval)
        if signatures(paths) != seen:
            # Let a writer that is still writing finish before we read.
            await asyncio.sleep(interval / 2)
            seen = signatures(paths)
            try:
                outcome = on_change()
                if inspect.isawaitable(outcome):
                    await outcome  # one reload at a time: the next look waits for it
            except Exception:
                log.exception("reload after a file change failed")


def start_watching(
    paths: Sequence[Path],
    on_change: Callable[[], object],
    interval: float = 0.5,
    since: Sequence[Signature] | None = None,
) -> Callable[[], Awaitable[None]]:
    """Start the watcher task; returns an async stopper for the server's cleanup."""
    task = asyncio.ensure_future(watch_files(paths, on_change, interval, since))

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
