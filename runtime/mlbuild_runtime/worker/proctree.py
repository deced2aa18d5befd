"""Find and end every process a worker started, wherever it went; reap orphans for a server that
inherits them. Standard library only; Linux (``/proc``); elsewhere every function does nothing
and says so by returning False/empty.

A model's helpers can escape the worker's process group (``setsid``, ``start_new_session=True``,
a daemon's double fork), so killing the group is not enough. Two nets, used together:

* :func:`kill_descendants` walks the tree under a live process through the parent pids in
  ``/proc/<pid>/stat``: stop every process found (a stopped process cannot fork a new one),
  walk again until nothing new appears, then SIGKILL them all. It finds what the model started
  and still parents (a ``setsid`` child included);
* every process the model starts inherits a random token in its environment
  (``MLBUILD_WORKER_TOKEN``: set by the server, or by the worker itself when started alone;
  ``/proc/<pid>/environ`` shows the environment a process was started with): :func:`kill_tagged`
  finds them after they were orphaned and re-parented away (a daemon's double fork), or after
  the worker died without cleaning up (segfault, ``os._exit``, OOM kill). The worker runs both
  before it exits; the server runs both on a worker it kills or lost. A helper that clears its
  own environment *and* leaves the tree escapes both (only a cgroup would catch it).

Why the worker is not a child subreaper (``PR_SET_CHILD_SUBREAPER``), though that would keep
orphans in its tree: a subreaper must reap the orphans it adopts, and it cannot tell them from
its own children - both are its children, and a zombie shows no trace of its original parent -
while the model waits for its own (``subprocess.Popen``, asyncio) and reaping one of those
behind its back turns its exit status into 0. A worker that reaps nothing lets adopted orphans
pile up as zombies (up to the pids cgroup limit). So orphans go to whoever reaps them: init on
a host or under a container's init, or the server when it is PID 1 itself - which knows its
only children of its own, the workers, so :func:`reap_orphans` can spare exactly those.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Dict, Iterable, List, Set

__all__ = ["TOKEN_VAR", "become_subreaper", "descendants", "end_all", "ensure_token", "inherits_orphans",
           "kill_descendants", "kill_tagged", "reap_orphans", "tagged"]

TOKEN_VAR = "MLBUILD_WORKER_TOKEN"
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_ROUNDS = 10  # walks before giving up on a tree that keeps forking (each walk stops what it finds)


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux >= 3.4). Not used by the
    worker (see the module's docstring); tests use it to stand in for PID 1."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def inherits_orphans() -> bool:
    """Whether orphaned descendants are re-parented to this process: it is PID 1 (of a
    container without an init) or a child subreaper. Such a process must reap them."""
    if os.getpid() == 1:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        return libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0
    except (OSError, AttributeError):
        return False


def ensure_token() -> str:
    """This process's token, put in its environment first when nobody gave one (a worker started
    without the server), so that everything it starts from now on carries it."""
    token = os.environ.get(TOKEN_VAR)
    if not token:
        token = "%d-%s" % (os.getpid(), os.urandom(8).hex())
        os.environ[TOKEN_VAR] = token
    return token


def end_all(token: str) -> List[int]:
    """SIGKILL what this process started: its live descendants, then whatever carries ``token``."""
    return sorted(set(kill_descendants(os.getpid())) | set(kill_tagged(token)))


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


def _zombie_children(parent: int) -> List[int]:
    found = []
    for pid in _pids():
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 2 and fields[0] == b"Z" and int(fields[1]) == parent:
            found.append(pid)
    return found


def reap_orphans(keep: Set[int]) -> List[int]:
    """Reap this process's zombie children except the pids in ``keep`` (children whose status
    their owner waits for, e.g. asyncio's); the pids reaped. For a process that inherits
    orphans (:func:`inherits_orphans`) and knows all the children it started itself."""
    reaped = []
    for pid in _zombie_children(os.getpid()):
        if pid in keep:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
        except ChildProcessError:  # reaped meanwhile by someone else
            pass
    return reaped


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
