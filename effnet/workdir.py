"""A run holds its workdir: `with hold(workdir): ...` keeps a second run off the same workdir.

Why: two runs on one workdir (a sweep launched twice, a retried pod job while the first still runs) race in orbax's
temporary checkpoint directories, and one of them hangs forever. The lock makes the second run fail at once with a
`WorkdirBusyError` that names the holder (host, pid, start time, lock file) and says what to do.

The lock is the file `WORKDIR/run.lock` (JSON: host, pid, start time, a random owner token, a heartbeat timestamp).
Only JAX process 0 takes it: the other processes of a multi-host run share the workdir by design.

A lock whose holder is dead is taken over, with a logged warning:
- same host: the holder's pid is gone (`os.kill(pid, 0)`), or now belongs to a process that started after the lock
  was written (a reused pid, e.g. in a restarted container). A SIGKILLed run therefore leaves the lock behind, and
  the next run on that host takes it over at once.
- another host (gs://, a shared disk): the holder rewrites the heartbeat every `heartbeat_s` seconds from a daemon
  thread; a lock whose heartbeat is older than `stale_after_s` (default 10 × `heartbeat_s`) is taken over.

Guarantees and their limits:
- local / POSIX disk: creation is atomic (`os.open(O_CREAT | O_EXCL)`), so of two runs starting together exactly one
  holds the lock. A takeover deletes the stale file only if it still has the bytes judged stale, under an flock of
  the workdir directory, so two runs taking over one stale lock cannot both win. (O_EXCL is atomic on NFSv3+; where
  flock is unavailable the takeover is unserialized and two simultaneous takeovers can, rarely, both win.)
- gs://: there is no exclusive create in etils.epath. A run that finds no lock writes its own, waits `_GCS_SETTLE_S`
  and reads it back: the last writer wins and the others fail. Two runs whose existence check and write both fall
  inside that settle window can both believe they hold it; in practice runs start seconds to minutes apart, and this
  catches the common mistake, but it is not a mutual-exclusion guarantee.
- A holder that is alive but hung for longer than `stale_after_s` on another host loses the lock; its heartbeat
  thread notices (the owner token changed), logs an error and stops rewriting. The lock does not stop that run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from typing import Iterator, Optional

LOCK_FILE = 'run.lock'
DEFAULT_HEARTBEAT_S = 30.0
STALE_FACTOR = 10          # default stale timeout = STALE_FACTOR × heartbeat interval
_GCS_SETTLE_S = 2.0        # gs:// write → read-back delay (see the module docstring)
_UNREADABLE_RETRIES = 10   # a lock file being written is briefly empty: re-read it for about a second
_ACQUIRE_ATTEMPTS = 5      # create / judge / take over rounds before giving up on a contended lock
_HELD_TOKENS: set[str] = set()  # owner tokens this process holds: a second take in the same process is refused


class WorkdirBusyError(ValueError):
  """Another live run holds the workdir."""

  def __init__(self, lock_path: str, holder: 'Holder', stale_after_s: float):
    self.lock_path, self.holder = lock_path, holder
    stale_at = _utc(holder.heartbeat + stale_after_s)
    super().__init__(
        f'workdir {os.path.dirname(lock_path) or lock_path} is in use by another run: host {holder.host}, '
        f'pid {holder.pid}, started {_utc(holder.started)}, last heartbeat {time.time() - holder.heartbeat:.0f} s '
        f'ago (lock file {lock_path}). Two runs on one workdir corrupt each other\'s checkpoints. Wait for that run '
        f'to finish or stop it, or use another workdir. If that run is certainly dead, delete {lock_path}; a lock '
        f'from another host is also taken over once its heartbeat is {stale_after_s:.0f} s old (at {stale_at}).')


@dataclasses.dataclass(frozen=True)
class Holder:
  """What a lock file says: who holds the workdir, since when, and when it last proved to be alive."""
  host: str
  pid: int
  token: str
  started: float          # unix time the lock was taken
  heartbeat: float        # unix time of the last heartbeat
  raw: str = ''           # the file's text as read: a takeover deletes the file only if it is still these bytes

  @classmethod
  def for_this_process(cls) -> 'Holder':
    now = time.time()
    return cls(socket.gethostname(), os.getpid(), secrets.token_hex(8), now, now)

  def to_text(self) -> str:
    return json.dumps({'host': self.host, 'pid': self.pid, 'token': self.token, 'started': self.started,
                       'started_utc': _utc(self.started), 'heartbeat': self.heartbeat})

  @classmethod
  def from_text(cls, text: str) -> Optional['Holder']:
    """The holder in `text`, or None when it is not a complete lock file (being written, or damaged)."""
    try:
      d = json.loads(text)
      return cls(str(d['host']), int(d['pid']), str(d['token']), float(d['started']), float(d['heartbeat']), text)
    except (ValueError, KeyError, TypeError):
      return None


def _utc(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')


@contextlib.contextmanager
def hold(workdir: str, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S, stale_after_s: Optional[float] = None,
         primary: Optional[bool] = None) -> Iterator[Optional['WorkdirLock']]:
  """Holds `workdir` for the body: raises WorkdirBusyError if a live run holds it; releases it however the body ends.

  `primary` (default: jax.process_index() == 0) says whether this process takes the lock; the other processes of a
  multi-host run yield None and take nothing. Call it after jax.distributed is initialized.
  """
  if primary is None:
    import jax  # pylint: disable=g-import-not-at-top
    primary = jax.process_index() == 0
  if not primary:
    yield None
    return
  lock = WorkdirLock(workdir, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s)
  lock.acquire()
  try:
    yield lock
  finally:
    lock.release()


class WorkdirLock:
  """The lock file of one workdir, held by this process between acquire() and release()."""

  def __init__(self, workdir: str, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
               stale_after_s: Optional[float] = None):
    workdir = os.fspath(workdir)
    if heartbeat_s <= 0 or (stale_after_s is not None and stale_after_s <= heartbeat_s):
      raise ValueError(f'workdir lock: heartbeat_s={heartbeat_s} must be > 0 and stale_after_s={stale_after_s} '
                       'larger than it (a live holder must get to rewrite its heartbeat before it looks stale)')
    self.heartbeat_s = heartbeat_s
    self.stale_after_s = stale_after_s if stale_after_s is not None else STALE_FACTOR * heartbeat_s
    self._store = _GcsStore(workdir) if '://' in workdir else _LocalStore(workdir)
    self.path = self._store.path
    self.me = Holder.for_this_process()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def acquire(self) -> None:
    """Creates the lock file, taking over a stale one; raises WorkdirBusyError if a live run holds it."""
    _HELD_TOKENS.add(self.me.token)  # before the file exists: another thread of this process may read it at once
    try:
      self._take()
    except BaseException:
      _HELD_TOKENS.discard(self.me.token)
      raise
    self._thread = threading.Thread(target=self._beat, name='workdir-lock-heartbeat', daemon=True)
    self._thread.start()
    logging.info('Holding workdir lock %s (host %s, pid %d).', self.path, self.me.host, self.me.pid)

  def _take(self) -> None:
    for _ in range(_ACQUIRE_ATTEMPTS):
      if self._store.create(self.me):
        break
      current = self._store.read()
      if current is None:   # released or taken away between our attempt and the read: try again
        continue
      reason = _stale_reason(current, self.stale_after_s)
      if reason is None:
        raise WorkdirBusyError(self.path, current, self.stale_after_s)
      logging.warning('Taking over the workdir lock %s from host %s pid %s (started %s): %s.', self.path,
                      current.host, current.pid, _utc(current.started), reason)
      self._store.remove_if_unchanged(current)
    else:
      raise RuntimeError(f'could not take the workdir lock {self.path} in {_ACQUIRE_ATTEMPTS} attempts: other runs '
                         'keep creating and removing it. Start one run per workdir.')

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock file if it is still ours (a takeover may have replaced it)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    _HELD_TOKENS.discard(self.me.token)
    current = self._store.read()
    if current is not None and current.token == self.me.token:
      self._store.remove_if_unchanged(current)

  def _beat(self) -> None:
    """Rewrites the heartbeat every heartbeat_s until released; stops (logging an error) if the lock was taken."""
    while not self._stop.wait(self.heartbeat_s):
      try:
        beat = dataclasses.replace(self.me, heartbeat=time.time())
        if not self._store.rewrite_if_ours(beat):
          logging.error('Lost the workdir lock %s: another run took it over (%s); two runs may now share the '
                        'workdir.', self.path, self._store.read())
          return
        self.me = beat
      except OSError as e:  # a transient storage error: the next beat tries again
        logging.warning('Workdir lock heartbeat on %s failed: %s', self.path, e)


def _stale_reason(holder: Holder, stale_after_s: float) -> Optional[str]:
  """Why `holder` is dead (so its lock may be taken over), or None if it may be alive."""
  if holder.host == socket.gethostname():
    if holder.pid == os.getpid():
      if holder.token in _HELD_TOKENS:
        return None
      return f'pid {holder.pid} is this process, which does not hold it (an earlier process with the same pid)'
    if not _pid_alive(holder.pid):
      return f'pid {holder.pid} is gone'
    if _pid_started_after(holder.pid, holder.started):
      return f'pid {holder.pid} now belongs to a process started after the lock was taken (pid reused)'
    return None
  age = time.time() - holder.heartbeat
  if age > stale_after_s:
    return f'its heartbeat is {age:.0f} s old (stale after {stale_after_s:.0f} s)'
  return None


def _pid_alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _pid_started_after(pid: int, t: float, slack_s: float = 2.0) -> bool:
  """Whether process `pid` started after unix time `t` (Linux /proc; False where that cannot be told)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # field 22, counted after the ')' of the name
    with open('/proc/stat') as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
  except (OSError, ValueError, IndexError, StopIteration):
    return False
  return boot + start_ticks / os.sysconf('SC_CLK_TCK') > t + slack_s


class _LocalStore:
  """The lock file on a POSIX file system: exclusive create; rewrite and takeover under a workdir flock."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)

  def create(self, holder: Holder) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(holder.to_text())
      f.flush()
      os.fsync(f.fileno())
    return True

  def read(self) -> Optional[Holder]:
    """The holder, None if there is no lock file; an unreadable file counts as a foreign holder alive at its mtime."""
    for _ in range(_UNREADABLE_RETRIES):
      try:
        with open(self.path) as f:
          text = f.read()
        mtime = os.stat(self.path).st_mtime
      except FileNotFoundError:
        return None
      holder = Holder.from_text(text)
      if holder is not None:
        return holder
      time.sleep(0.1)
    return Holder('<unreadable lock file>', -1, '', mtime, mtime, text)

  def rewrite_if_ours(self, holder: Holder) -> bool:
    """Replaces the lock file (atomically) by `holder` if it still has holder's token; False if it was taken."""
    with self._workdir_flock():
      current = self.read()
      if current is None or current.token != holder.token:
        return False
      tmp = f'{self.path}.{holder.token}.tmp'
      with open(tmp, 'w') as f:
        f.write(holder.to_text())
      os.replace(tmp, self.path)
    return True

  def remove_if_unchanged(self, seen: Holder) -> None:
    """Deletes the lock file if it is still `seen` (same bytes), serialized with other takers of this workdir: a run
    that judged the old lock stale must not delete the fresh lock another taker has just created."""
    with self._workdir_flock():
      try:
        with open(self.path) as f:
          unchanged = f.read() == seen.raw
      except FileNotFoundError:
        return
      if unchanged:
        os.unlink(self.path)

  @contextlib.contextmanager
  def _workdir_flock(self) -> Iterator[None]:
    """An exclusive flock on the workdir directory (released by the kernel if the process dies); where the file
    system has no flock (some network disks) it is skipped, leaving the small race the module docstring names."""
    fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX)
      except OSError as e:
        logging.info('No flock on %s (%s): lock takeover is not serialized.', os.path.dirname(self.path), e)
      yield
    finally:
      os.close(fd)  # closing the descriptor releases the flock


class _GcsStore:
  """The lock file on gs:// (etils.epath): write, settle, read back; see the module docstring for the race."""

  def __init__(self, workdir: str):
    from etils import epath  # pylint: disable=g-import-not-at-top
    self._file = epath.Path(workdir) / LOCK_FILE
    self.path = os.fspath(self._file)

  def create(self, holder: Holder) -> bool:
    if self._file.exists():
      return False
    self._file.write_text(holder.to_text())
    time.sleep(_GCS_SETTLE_S)
    current = self.read()
    return current is not None and current.token == holder.token

  def read(self) -> Optional[Holder]:
    """The holder, None if there is no lock file; an unreadable object counts as long dead (uploads are atomic)."""
    try:
      text = self._file.read_text() if self._file.exists() else None
    except FileNotFoundError:
      text = None
    if text is None:
      return None
    return Holder.from_text(text) or Holder('<unreadable lock file>', -1, '', 0.0, 0.0, text)

  def rewrite_if_ours(self, holder: Holder) -> bool:
    current = self.read()
    if current is None or current.token != holder.token:
      return False
    self._file.write_text(holder.to_text())
    return True

  def remove_if_unchanged(self, seen: Holder) -> None:
    current = self.read()
    if current is not None and current.raw == seen.raw:
      self._file.unlink(missing_ok=True)


def as_path(path):
  """`path` (a str, local or gs://) as an etils.epath.Path: the one way effnet and launch/ open workdirs, so that
  local disks and buckets go through the same API orbax and tfds use."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def check_usable(workdir: str) -> None:
  """Raises ValueError naming `workdir` when a run could not write there: it is an existing file, it lies under a
  file, or its nearest existing directory refuses a new file (permissions, a read-only disk).

  Why: called before anything loads, so the mistake fails in a second instead of as a bare OSError after the
  config, the devices and the dataset were set up. Creates nothing (the probe file is gone when this returns).
  Remote paths (gs://) are left to their first write."""
  if '://' in str(workdir):
    return
  allowed = 'allowed: a directory (existing, or to be created) this user can write'
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'workdir={workdir!r} is an existing file, not a directory; {allowed}')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f'workdir={workdir!r} cannot be created: {existing} is a file; {allowed}')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ValueError(f'workdir={workdir!r} is not writable: cannot create a file in {existing} ({e.strerror}); '
                     f'{allowed}') from None
