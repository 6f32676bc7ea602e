"""A run holds its workdir (effnet/workdir.py): a second run on it fails at once naming the holder; a lock left by a
dead process (same host: pid gone; another host: heartbeat too old) is taken over; the lock goes when the run ends.
"""
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import _train_helpers as h
from effnet import workdir as workdir_lib


def _write_lock(workdir, host=None, pid=None, heartbeat_age_s=0.0, started_age_s=0.0):
  now = time.time()
  holder = workdir_lib.Holder(host or socket.gethostname(), os.getpid() if pid is None else pid, 'foreign-token',
                              now - started_age_s, now - heartbeat_age_s)
  (workdir / workdir_lib.LOCK_FILE).write_text(holder.to_text())
  return holder


def _lock_contents(workdir):
  return json.loads((workdir / workdir_lib.LOCK_FILE).read_text())


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_holds_and_releases(tmp_path):
  with workdir_lib.hold(tmp_path, primary=True) as lock:
    got = _lock_contents(tmp_path)
    assert got['host'] == socket.gethostname() and got['pid'] == os.getpid() and got['token'] == lock.me.token
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()
  with workdir_lib.hold(tmp_path, primary=True):  # free again
    pass


def test_released_after_an_exception(tmp_path):
  with pytest.raises(KeyError, match='boom'):
    with workdir_lib.hold(tmp_path, primary=True):
      raise KeyError('boom')
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_second_take_in_the_same_process_fails_naming_the_holder(tmp_path):
  with workdir_lib.hold(tmp_path, primary=True):
    with pytest.raises(workdir_lib.WorkdirBusyError) as e:
      with workdir_lib.hold(tmp_path, primary=True):
        pass
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert f'host {socket.gethostname()}' in msg and f'pid {os.getpid()}' in msg and 'started 20' in msg
    assert str(tmp_path / workdir_lib.LOCK_FILE) in msg and 'another workdir' in msg
    assert (tmp_path / workdir_lib.LOCK_FILE).exists()  # the refused take left the holder's lock alone
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_live_pid_on_this_host_is_refused(tmp_path):
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, heartbeat_age_s=3600)  # on this host an old heartbeat is no reason
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f'pid {sleeper.pid}'):
      with workdir_lib.hold(tmp_path, primary=True):
        pass
    assert _lock_contents(tmp_path)['pid'] == sleeper.pid
  finally:
    sleeper.kill()
    sleeper.wait()


def test_dead_pid_on_this_host_is_taken_over(tmp_path, caplog):
  dead = _dead_pid()
  _write_lock(tmp_path, pid=dead)  # a fresh heartbeat: on this host the pid decides
  with workdir_lib.hold(tmp_path, primary=True) as lock:
    assert _lock_contents(tmp_path)['token'] == lock.me.token
  assert f'pid {dead} is gone' in caplog.text and 'Taking over' in caplog.text
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_reused_pid_on_this_host_is_taken_over(tmp_path, caplog):
  """The lock's pid is alive but belongs to a process started after the lock was taken (restarted container)."""
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, started_age_s=600)
    with workdir_lib.hold(tmp_path, primary=True):
      pass
    assert 'pid reused' in caplog.text
  finally:
    sleeper.kill()
    sleeper.wait()


def test_foreign_host_fresh_heartbeat_is_refused_old_is_taken_over(tmp_path, caplog):
  _write_lock(tmp_path, host='other-host', pid=12345, heartbeat_age_s=5)
  with pytest.raises(workdir_lib.WorkdirBusyError, match='host other-host, pid 12345'):
    with workdir_lib.hold(tmp_path, primary=True, heartbeat_s=1, stale_after_s=10):
      pass
  _write_lock(tmp_path, host='other-host', pid=12345, heartbeat_age_s=11)
  with workdir_lib.hold(tmp_path, primary=True, heartbeat_s=1, stale_after_s=10):
    assert _lock_contents(tmp_path)['host'] == socket.gethostname()
  assert 'heartbeat is 11 s old' in caplog.text


def test_heartbeat_is_rewritten_and_a_lost_lock_is_left_alone(tmp_path):
  with workdir_lib.hold(tmp_path, primary=True, heartbeat_s=0.1) as lock:
    first = _lock_contents(tmp_path)['heartbeat']
    assert h.wait_for(lambda: _lock_contents(tmp_path)['heartbeat'] > first, timeout=5)
    _write_lock(tmp_path, host='other-host', pid=1)  # taken over behind our back
    time.sleep(0.3)
    assert lock._thread is not None and not lock._thread.is_alive()  # the heartbeat noticed and stopped
  assert _lock_contents(tmp_path)['host'] == 'other-host'  # release did not delete the new holder's lock


def test_concurrent_takes_exactly_one_wins(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid())
  winners, errors, barrier = [], [], threading.Barrier(8)

  def take():
    barrier.wait()
    lock = workdir_lib.WorkdirLock(str(tmp_path))
    try:
      lock.acquire()
      winners.append(lock)
    except workdir_lib.WorkdirBusyError as e:
      errors.append(e)

  threads = [threading.Thread(target=take) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(winners) == 1 and len(errors) == 7, (winners, errors)
  winners[0].release()


def test_non_primary_process_takes_nothing(tmp_path):
  with workdir_lib.hold(tmp_path, primary=False) as lock:
    assert lock is None and not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_second_training_run_on_a_held_workdir_fails_at_once(tmp_path, digits_dir, jax_cache_dir):
  """A real run holds its workdir: a second run on it exits at once naming the holder; SIGTERM (preemption) ends
  the first run normally and releases the lock. (SIGKILL leaves the lock: test_resume restarts such runs.)"""
  overrides = {'data.data_dir': digits_dir, 'train.total_steps': 100_000, 'train.checkpoint_every_steps': 100_000,
               'train.compile_cache_dir': jax_cache_dir}
  lock_file = tmp_path / workdir_lib.LOCK_FILE
  first = subprocess.Popen(h.child_command(tmp_path, overrides), env=h.child_env(1), cwd=h.REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert h.wait_for(lambda: lock_file.exists() and _lock_contents(tmp_path)['pid'] == first.pid, timeout=60,
                      proc=first), first.communicate()[1][-4000:]
    t0 = time.monotonic()
    second = h.run_child(tmp_path, overrides, check=False, timeout=60)
    second_s = time.monotonic() - t0
    assert second.returncode != 0 and first.poll() is None
    assert 'WorkdirBusyError' in second.stdout and f'pid {first.pid}' in second.stdout, second.stdout[-2000:]
    assert f'host {socket.gethostname()}' in second.stdout and str(lock_file) in second.stdout
    assert second_s < 30, second_s  # the time to import the engine; no compile, no data
    assert _lock_contents(tmp_path)['pid'] == first.pid  # the refused run left the holder's lock alone

    # Preemption: once training runs (orbax saves the first step it is handed), SIGTERM ends it normally.
    assert h.wait_for(lambda: h.checkpoint_steps(str(tmp_path)), timeout=120, proc=first), first.communicate()[1]
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0 and '"stopped": "preempted"' in out, err[-4000:]
    assert not lock_file.exists()
  finally:
    h.kill_group(first)


# --- gs:// workdirs: the lock object under Cloud Storage's generation preconditions ----------------------------------
# An in-memory bucket with GCS's semantics for what effnet.workdir._GcsStore calls: every write bumps the object's
# generation; `if_generation_match=0` succeeds only when no object exists, `=g` only when it is at generation g; a
# failed precondition raises PreconditionFailed (HTTP 412), a missing object NotFound (404).
from google.api_core import exceptions as gexc  # noqa: E402


class _FakeBucket:

  def __init__(self, enforce_preconditions=True):
    self.objects, self.next_generation, self.mutex = {}, 1, threading.Lock()
    self.enforce = enforce_preconditions
    self.before_replace = lambda: None  # a hook to line contenders up just before a conditional replace

  def bucket(self, name):
    assert name == 'bkt'
    return self

  def blob(self, name):
    return _FakeBlob(self, name)

  def get_blob(self, name):
    with self.mutex:
      if name not in self.objects:
        return None
      blob = _FakeBlob(self, name)
      blob.generation, blob.updated = self.objects[name][1], self.objects[name][2]
      return blob

  def check(self, name, generation):
    current = self.objects.get(name, (None, 0))[1]
    if self.enforce and generation is not None and generation != current:
      raise gexc.PreconditionFailed(f'{name}: at generation {current}, not {generation}')


class _FakeBlob:

  def __init__(self, bucket, name):
    self.bucket, self.name, self.generation, self.updated = bucket, name, None, None

  def upload_from_string(self, data, content_type=None, if_generation_match=None):
    if if_generation_match:
      self.bucket.before_replace()
    with self.bucket.mutex:
      self.bucket.check(self.name, if_generation_match)
      now = datetime.datetime.now(datetime.timezone.utc)
      self.bucket.objects[self.name] = (data.encode(), self.bucket.next_generation, now)
      self.bucket.next_generation += 1

  def download_as_bytes(self, if_generation_match=None):
    with self.bucket.mutex:
      if self.name not in self.bucket.objects:
        raise gexc.NotFound(self.name)
      self.bucket.check(self.name, if_generation_match)
      return self.bucket.objects[self.name][0]

  def delete(self, if_generation_match=None):
    with self.bucket.mutex:
      if self.name not in self.bucket.objects:
        raise gexc.NotFound(self.name)
      self.bucket.check(self.name, if_generation_match)
      del self.bucket.objects[self.name]


GS_WORKDIR, GS_LOCK = 'gs://bkt/runs/r1', 'runs/r1/run.lock'


@pytest.fixture
def bucket(monkeypatch):
  fake = _FakeBucket()
  monkeypatch.setattr(workdir_lib, '_gcs_client', lambda workdir: fake)
  return fake


def _put_gs_lock(bucket, host, heartbeat_age_s):
  now = time.time()
  holder = workdir_lib.Holder(host, 4242, 'foreign-token', now - 3600, now - heartbeat_age_s)
  bucket.blob(GS_LOCK).upload_from_string(holder.to_text())


def _gs_holder(bucket):
  return json.loads(bucket.objects[GS_LOCK][0]) if GS_LOCK in bucket.objects else None


def _contend(n=2, **lock_kwargs):
  """`n` runs acquiring GS_WORKDIR at the same moment: (winners, WorkdirBusyErrors)."""
  winners, busy, barrier = [], [], threading.Barrier(n)

  def take():
    lock = workdir_lib.WorkdirLock(GS_WORKDIR, **lock_kwargs)
    barrier.wait()
    try:
      lock.acquire()
      winners.append(lock)
    except workdir_lib.WorkdirBusyError as e:
      busy.append(e)

  threads = [threading.Thread(target=take) for _ in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=30)
  return winners, busy


def test_gs_fake_bucket_takes_the_arguments_google_cloud_storage_has():
  """The fake's calls exist with these keywords in the real client, so the store's calls are real ones."""
  import inspect

  from google.cloud import storage
  for method, keyword in [(storage.Blob.upload_from_string, 'if_generation_match'), (storage.Blob.delete,
                          'if_generation_match'), (storage.Blob.download_as_bytes, 'if_generation_match'),
                          (storage.Bucket.get_blob, 'blob_name'), (storage.Bucket.blob, 'blob_name')]:
    assert keyword in inspect.signature(method).parameters, method


def test_gs_two_contenders_exactly_one_wins_and_release_deletes(bucket):
  winners, busy = _contend()
  assert len(winners) == 1 and len(busy) == 1, (winners, busy)
  assert _gs_holder(bucket)['token'] == winners[0].me.token and f'pid {os.getpid()}' in str(busy[0])
  assert winners[0].path == f'{GS_WORKDIR}/run.lock'
  winners[0].release()
  assert GS_LOCK not in bucket.objects


def test_gs_stale_holder_is_taken_over_by_exactly_one_of_two(bucket, caplog):
  _put_gs_lock(bucket, 'dead-host', heartbeat_age_s=600)
  lined_up = threading.Barrier(2)
  bucket.before_replace = lambda: lined_up.wait(timeout=10)  # both judged the same generation stale
  winners, busy = _contend(heartbeat_s=30, stale_after_s=300)
  assert len(winners) == 1 and len(busy) == 1, (winners, busy)
  assert _gs_holder(bucket)['token'] == winners[0].me.token
  assert caplog.text.count('heartbeat is 600 s old') == 2  # both judged it stale; one replace matched
  winners[0].release()


def test_gs_without_preconditions_the_same_race_has_two_winners(monkeypatch):
  """The control: the interleaving above is a real race, which only the preconditions decide."""
  fake = _FakeBucket(enforce_preconditions=False)
  monkeypatch.setattr(workdir_lib, '_gcs_client', lambda workdir: fake)
  _put_gs_lock(fake, 'dead-host', heartbeat_age_s=600)
  lined_up = threading.Barrier(2)
  fake.before_replace = lambda: lined_up.wait(timeout=10)
  winners, _ = _contend(heartbeat_s=30, stale_after_s=300)
  assert len(winners) == 2
  for lock in winners:
    lock.release()


def test_gs_live_holder_is_never_taken_over(bucket):
  _put_gs_lock(bucket, 'live-host', heartbeat_age_s=5)
  generation = bucket.objects[GS_LOCK][1]
  winners, busy = _contend(heartbeat_s=30, stale_after_s=300)
  assert not winners and len(busy) == 2 and all('host live-host, pid 4242' in str(e) for e in busy)
  assert bucket.objects[GS_LOCK][1] == generation  # not rewritten


def test_gs_heartbeat_and_a_lost_lock(bucket):
  with workdir_lib.hold(GS_WORKDIR, primary=True, heartbeat_s=0.1) as lock:
    first = _gs_holder(bucket)['heartbeat']
    assert h.wait_for(lambda: _gs_holder(bucket)['heartbeat'] > first, timeout=5)
    _put_gs_lock(bucket, 'other-host', heartbeat_age_s=0)  # taken over behind our back
    assert h.wait_for(lambda: not lock._thread.is_alive(), timeout=5)
  assert _gs_holder(bucket)['host'] == 'other-host'  # release did not delete the new holder's lock


def test_remote_workdir_without_an_atomic_lock_is_refused(monkeypatch):
  with pytest.raises(ValueError, match=r"workdir='s3://b/w': no atomic lock for s3:// paths; allowed: .*gs://"):
    workdir_lib.check_usable('s3://b/w')
  import google.cloud  # as if google-cloud-storage were not installed: the module and the package's attribute
  monkeypatch.setitem(sys.modules, 'google.cloud.storage', None)
  monkeypatch.delattr(google.cloud, 'storage', raising=False)
  with pytest.raises(ValueError, match=r"workdir='gs://b/w': .*needs the google-cloud-storage package"):
    workdir_lib.check_usable('gs://b/w')
