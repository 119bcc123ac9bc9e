"""One run per workdir: an exclusive lock on `WORKDIR/run.lock`, held for the run.

Usage::

    lock = WorkdirLock(workdir)
    lock.acquire()        # TrainingError naming the other run's pid if it holds the lock
    ...                   # train, write metrics and checkpoints
    lock.release()

Two runs in one workdir (a cluster job requeued while the old one still runs) would
interleave their metrics.jsonl lines and race on the checkpoints. The lock is an
`fcntl.flock` on an open file: the kernel releases it when the process ends in any way
(SIGKILL, a crash, a lost node's process being reaped), so a killed run never leaves a
stale lock behind. The file stays; it holds the pid and host of the run that holds it.
Only process 0 of a multi-process run takes it (the others write nothing).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from absl import logging

from localjax.errors import TrainingError

__all__ = ["LOCK_FILE", "WorkdirLock"]

LOCK_FILE = "run.lock"


class WorkdirLock:
    """An exclusive, non-blocking lock on `workdir` for the lifetime of one run.

    Args:
      workdir: an existing directory.

    Raises:
      Nothing on construction; see `acquire`.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock and records this process in the lock file.

        Raises:
          TrainingError: another process holds it (the message names the workdir and
            that run's pid and host).
          OSError: the lock file cannot be created.

        On a file system without `flock` support the run goes on unlocked, with a warning.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(fd)
                os.close(fd)
                raise TrainingError(
                    f"another run ({holder}) is training in {self.workdir}: two runs in one "
                    "workdir would overwrite each other's metrics and checkpoints. Wait for "
                    "it to end (or stop it), then rerun to resume; or use another workdir."
                ) from None
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                logging.warning(
                    "cannot lock %s (%s): nothing stops a second run in this workdir.",
                    self.path,
                    e.strerror,
                )
                return
            raise
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
        )
        self._fd = fd

    def release(self) -> None:
        """Releases the lock (idempotent). The file stays: deleting it could let two runs
        lock two different files of the same name."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    """The holder's line from the lock file: `pid N on HOST, since TIME`."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "pid unknown"
