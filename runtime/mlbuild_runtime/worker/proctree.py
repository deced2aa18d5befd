"""Find and end every process a worker started, wherever it went. Standard library only; Linux
(``/proc``); elsewhere every function does nothing and says so by returning False/empty.

A model's helpers can escape the worker's process group (``setsid``, ``start_new_session=True``,
a daemon's double fork), so killing the group is not enough. Three nets, used together:

* the worker makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): while it
  lives, an orphaned descendant is re-parented to it instead of to init, so its whole tree stays
  findable through the parent pids in ``/proc/<pid>/stat``;
* :func:`kill_descendants` walks that tree: stop every process found (a stopped process cannot
  fork a new one), walk again until nothing new appears, then SIGKILL them all. The worker runs
  it on itself before exiting; the server runs it on a live worker before killing it;
* the server puts a random token in each worker's environment, which every descendant inherits
  (``/proc/<pid>/environ`` shows the environment a process was started with): when a worker has
  died without cleaning up (segfault, ``os._exit``, OOM kill) and its orphans were re-parented
  away, :func:`kill_tagged` still finds them.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Dict, Iterable, List, Set

__all__ = ["TOKEN_VAR", "become_subreaper", "descendants", "kill_descendants", "kill_tagged"]

TOKEN_VAR = "MLBUILD_WORKER_TOKEN"
_PR_SET_CHILD_SUBREAPER = 36
_ROUNDS = 10  # walks before giving up on a tree that keeps forking (each walk stops what it finds)


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux >= 3.4)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _pids() -> List[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _children_map() -> Dict[int, List[int]]:
    """parent pid -> live (non-zombie) child pids, from /proc/<pid>/stat."""
    children: Dict[int, List[int]] = {}
    for pid in _pids():
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
        # the last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) < 2 or fields[0] in (b"Z", b"X"):
            continue
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def descendants(root: int) -> List[int]:
    """Live descendants of ``root`` (not ``root`` itself), parents before children."""
    children = _children_map()
    found: List[int] = []
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _stop_then_kill(find: Callable[[], List[int]]) -> List[int]:
    me = os.getpid()
    stopped: Set[int] = set()
    for _ in range(_ROUNDS):
        new = [pid for pid in find() if pid not in stopped and pid != me]
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        stopped.update(new)
    _signal(stopped, signal.SIGKILL)
    return sorted(stopped)


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_descendants(root: int) -> List[int]:
    """SIGKILL every live descendant of ``root`` (which itself is left alone); the pids."""
    if not os.path.isdir("/proc/self"):
        return []
    return _stop_then_kill(lambda: descendants(root))


def tagged(token: str) -> List[int]:
    """Pids whose starting environment holds ``MLBUILD_WORKER_TOKEN=<token>``."""
    needle = ("%s=%s\0" % (TOKEN_VAR, token)).encode()
    found = []
    for pid in _pids():
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read()
        except OSError:  # another user's process, or gone
            continue
        if needle in env or env.endswith(needle[:-1]):
            found.append(pid)
    return found


def kill_tagged(token: str) -> List[int]:
    """SIGKILL every process started with ``token`` in its environment; the pids."""
    if not token or not os.path.isdir("/proc/self"):
        return []
    return _stop_then_kill(lambda: tagged(token))
