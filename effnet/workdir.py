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

Guarantees and their limits (every store offers the same four conditional operations, `_LockStore`):
- local / POSIX disk: creation is atomic (`os.open(O_CREAT | O_EXCL)`), so of two runs starting together exactly one
  holds the lock. A takeover or heartbeat replaces the file only if it still has the bytes read before (the
  "generation" of a local lock file is its text), under an flock of the workdir directory, so two runs taking over
  one stale lock cannot both win. (O_EXCL is atomic on NFSv3+; where flock is unavailable the takeover is
  unserialized and two simultaneous takeovers can, rarely, both win.)
- gs://: the same guarantees from Cloud Storage's generation preconditions (google-cloud-storage): the lock is
  created with `if_generation_match=0` (the write fails if the object exists), and a heartbeat, takeover or release
  writes or deletes only `if_generation_match=<the generation read>`, so of two runs creating, or taking over one
  stale lock, exactly one wins. Neither etils.epath nor tf.io.gfile offers a conditional write, so without
  google-cloud-storage a gs:// workdir is refused (`check_usable`) rather than held with a racy lock. Other
  schemes (s3://, ...) are refused the same way.
- A holder that is alive but hung for longer than `stale_after_s` on another host loses the lock; its heartbeat
  thread notices (the lock changed under it), logs an error and stops rewriting. The lock does not stop that run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import posixpath
import secrets
import socket
import tempfile
import threading
import time
from typing import Any, Iterator, Optional, Protocol

LOCK_FILE = 'run.lock'
DEFAULT_HEARTBEAT_S = 30.0
STALE_FACTOR = 10          # default stale timeout = STALE_FACTOR × heartbeat interval
_UNREADABLE_RETRIES = 10   # a local lock file being written is briefly empty: re-read it for about a second
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
      return cls(str(d['host']), int(d['pid']), str(d['token']), float(d['started']), float(d['heartbeat']))
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
    self._store = _store_for(workdir)
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
    """Create, or else judge the holder and take a stale lock over by a conditional replace: of several runs that
    judged the same lock stale, only the first replace matches the generation they read; the others re-read and
    find the winner alive."""
    for _ in range(_ACQUIRE_ATTEMPTS):
      if self._store.create_exclusive(self.me.to_text()):
        return
      seen = self._store.read()
      if seen is None:   # released between our create and the read: try again
        continue
      current = _holder_of(seen)
      if current.token == self.me.token:  # our create landed though its reply was lost (a retried request)
        return
      reason = _stale_reason(current, self.stale_after_s)
      if reason is None:
        raise WorkdirBusyError(self.path, current, self.stale_after_s)
      logging.warning('Taking over the workdir lock %s from host %s pid %s (started %s): %s.', self.path,
                      current.host, current.pid, _utc(current.started), reason)
      if self._store.replace_if(self.me.to_text(), seen.generation):
        return
    raise RuntimeError(f'could not take the workdir lock {self.path} in {_ACQUIRE_ATTEMPTS} attempts: other runs '
                       'keep creating and removing it. Start one run per workdir.')

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock file if it is still ours (a takeover may have replaced it)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    _HELD_TOKENS.discard(self.me.token)
    seen = self._store.read()
    if seen is not None and _holder_of(seen).token == self.me.token:
      self._store.delete_if(seen.generation)

  def _beat(self) -> None:
    """Rewrites the heartbeat every heartbeat_s until released; stops (logging an error) if the lock was taken."""
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self._rewrite_heartbeat():
          logging.error('Lost the workdir lock %s: another run took it over (%s); two runs may now share the '
                        'workdir.', self.path, self._store.read())
          return
      except OSError as e:  # a transient storage error: the next beat tries again
        logging.warning('Workdir lock heartbeat on %s failed: %s', self.path, e)

  def _rewrite_heartbeat(self) -> bool:
    """One heartbeat: replaces the lock only if it is still the version we read and holds our token."""
    seen = self._store.read()
    if seen is None or _holder_of(seen).token != self.me.token:
      return False
    beat = dataclasses.replace(self.me, heartbeat=time.time())
    if not self._store.replace_if(beat.to_text(), seen.generation):
      again = self._store.read()  # a retried request whose first try landed also fails its precondition
      if again is None or again.text != beat.to_text():
        return False
    self.me = beat
    return True


def _holder_of(seen: 'Seen') -> Holder:
  """The holder a lock file names; a file that does not parse (damaged) counts as a foreign holder whose last sign
  of life is the file's write time, so it is taken over once that is `stale_after_s` old."""
  return Holder.from_text(seen.text) or Holder('<unreadable lock file>', -1, '', seen.written_at, seen.written_at)


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


@dataclasses.dataclass(frozen=True)
class Seen:
  """One read of the lock file: its text, the generation a conditional replace or delete must match, and when it
  was written (unix time)."""
  text: str
  generation: Any
  written_at: float


class _LockStore(Protocol):
  """Where a lock file lives. The lock's safety rests on these four operations being atomic and conditional."""
  path: str

  def create_exclusive(self, text: str) -> bool:
    """Creates the lock file holding `text`; False (and nothing written) if it exists."""

  def read(self) -> Optional[Seen]:
    """The lock file as it is now, or None if there is none."""

  def replace_if(self, text: str, generation) -> bool:
    """Replaces the lock file by `text` if it is still at `generation`; False (and nothing written) otherwise."""

  def delete_if(self, generation) -> bool:
    """Deletes the lock file if it is still at `generation`; False otherwise."""


def _store_for(workdir: str) -> _LockStore:
  """The lock store of `workdir`: a local (or network) disk, or a gs:// bucket; any other scheme is refused."""
  scheme = workdir.split('://', 1)[0] if '://' in workdir else ''
  if not scheme:
    return _LocalStore(workdir)
  if scheme == 'gs':
    return _GcsStore(workdir, _gcs_client(workdir))
  raise ValueError(f'workdir={workdir!r}: no atomic lock for {scheme}:// paths; allowed: a local or network-disk '
                   'path, or gs://bucket/path')


class _LocalStore:
  """The lock file on a POSIX file system: exclusive create; replace and delete under a workdir flock, only while
  the file still has the text read before (the text is the generation: every heartbeat changes it)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)

  def create_exclusive(self, text: str) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    return True

  def read(self) -> Optional[Seen]:
    """The file; one that does not parse yet (being written by `create_exclusive`) is re-read for about a second."""
    for _ in range(_UNREADABLE_RETRIES):
      try:
        with open(self.path) as f:
          text = f.read()
        mtime = os.stat(self.path).st_mtime
      except FileNotFoundError:
        return None
      if Holder.from_text(text) is not None:
        break
      time.sleep(0.1)
    return Seen(text, text, mtime)

  def replace_if(self, text: str, generation) -> bool:
    with self._workdir_flock():
      if self._text() != generation:
        return False
      tmp = f'{self.path}.{secrets.token_hex(4)}.tmp'
      with open(tmp, 'w') as f:
        f.write(text)
      os.replace(tmp, self.path)
    return True

  def delete_if(self, generation) -> bool:
    with self._workdir_flock():
      if self._text() != generation:
        return False
      os.unlink(self.path)
    return True

  def _text(self) -> Optional[str]:
    try:
      with open(self.path) as f:
        return f.read()
    except FileNotFoundError:
      return None

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


def _gcs_client(workdir: str):
  """A google-cloud-storage client (credentials from the environment: the TPU VM's service account, or
  `gcloud auth application-default login`); a clear error when the package is missing."""
  try:
    from google.cloud import storage  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(_NO_GCS_CLIENT.format(workdir=workdir)) from None
  return storage.Client()


_NO_GCS_CLIENT = ('workdir={workdir!r}: holding a gs:// workdir needs the google-cloud-storage package (its '
                  'generation preconditions make the workdir lock atomic; orbax also needs it for gs:// '
                  'checkpoints), and it is not installed: pip install -r requirements.txt; allowed: a local path, or '
                  'gs://bucket/path with google-cloud-storage installed')


class _GcsStore:
  """The lock object on Cloud Storage, every write and delete conditional on the object's generation."""

  def __init__(self, workdir: str, client):
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    self._lost = (exceptions.PreconditionFailed, exceptions.NotFound)
    bucket_name, _, prefix = workdir.split('://', 1)[1].partition('/')
    self._name = posixpath.join(prefix.strip('/'), LOCK_FILE)
    self._bucket = client.bucket(bucket_name)
    self.path = f'gs://{bucket_name}/{self._name}'

  def create_exclusive(self, text: str) -> bool:
    return self.replace_if(text, 0)  # generation 0 matches only an object that does not exist

  def read(self) -> Optional[Seen]:
    """The object's text and generation, read as one version: the download must match the generation just
    listed; if the object changed in between, read again."""
    for _ in range(_UNREADABLE_RETRIES):
      blob = self._bucket.get_blob(self._name)
      if blob is None:
        return None
      try:
        data = blob.download_as_bytes(if_generation_match=blob.generation)
      except self._lost:
        continue
      return Seen(data.decode('utf-8', 'replace'), blob.generation, blob.updated.timestamp())
    raise OSError(f'workdir lock {self.path} changed {_UNREADABLE_RETRIES} times while it was read')

  def replace_if(self, text: str, generation) -> bool:
    try:
      self._bucket.blob(self._name).upload_from_string(text, content_type='application/json',
                                                       if_generation_match=generation)
    except self._lost:
      return False
    return True

  def delete_if(self, generation) -> bool:
    try:
      self._bucket.blob(self._name).delete(if_generation_match=generation)
    except self._lost:
      return False
    return True


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
  A remote path is checked for a lock store only (gs:// with google-cloud-storage); its writes are left to the
  first one."""
  if '://' in str(workdir):
    _check_remote(str(workdir))
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


def _check_remote(workdir: str) -> None:
  """The `_store_for` refusals, without connecting: a scheme with no atomic lock, or gs:// without its client."""
  scheme = workdir.split('://', 1)[0]
  if scheme != 'gs':
    _store_for(workdir)  # raises, naming the scheme
  try:
    from google.cloud import storage  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ValueError(_NO_GCS_CLIENT.format(workdir=workdir)) from None
