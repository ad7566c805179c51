# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Crash-safe records of the snapshots in flight.

nova-compute can die at any instant (OOM, a restart, a deploy).  Before a
snapshot touches anything, it writes one record: the instance, the image,
the domain's saved inactive XML, the disk and the temp paths, and the
phase it is in (and ``saved``: whether the snapshot may have saved the
guest, managed save, see ``suspend``).  The record is rewritten at each
phase and removed last, so a record that outlives its process says
exactly what to repair (see ``recovery``).

Records are JSON files in ``[snapdriver] journal_path``, written
atomically (temp file, fsync, rename, fsync of the directory) with mode
0600, because the XML can hold secrets.  Each snapshot also holds an
exclusive ``flock`` on ``<image-id>.lock`` for as long as it runs; the
kernel drops it when the process dies, however it dies, which is how
recovery tells a snapshot in flight from one whose process is gone.

Recovery writes into a record it repairs: ``recovery`` holds the number of
attempts, what is still to do and the last error, so that ``status`` can
say why a record is still there.
"""

import fcntl
import json
import os
import tempfile
import time

from oslo_config import cfg
from oslo_log import log as logging

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

VERSION = 1
REQUIRED = ('version', 'instance_uuid', 'image_id', 'phase', 'work_dir')
# write_atomically's temp files: '.tmp-<record name>-<random>'.
TEMP_PREFIX = '.tmp-'
# A temp file this old belongs to no write in progress: a write takes an
# fsync, not minutes.
TEMP_GRACE_SECONDS = 600


class CorruptRecord(Exception):
    pass


def directory():
    return CONF.snapdriver.journal_path


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path, data):
    """Replace ``path`` with ``data``: all of it or none, mode 0600.

    The temp file is named after ``path`` (``.tmp-<name>-<random>``), so a
    stray one left by a write that was interrupted can be told apart from
    the write of a snapshot in flight (``stray_temp_files``).  When root
    (an operator's ``recover``) rewrites a file, the new one keeps the old
    one's owner: nova-compute must still be able to read it.
    """
    dirname = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(
        dir=dirname, prefix='%s%s-' % (TEMP_PREFIX, os.path.basename(path)))
    try:
        os.fchmod(fd, 0o600)
        _keep_owner(fd, path)
        with os.fdopen(fd, 'w') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)


def _keep_owner(fd, path):
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    os.fchown(fd, st.st_uid, st.st_gid)


class Record(object):
    """The journal entry of one snapshot, owned by the process running it."""

    def __init__(self, data, path, lock_fd=None):
        self.data = data
        self.path = path
        self._lock_fd = lock_fd

    @property
    def image_id(self):
        return self.data['image_id']

    @property
    def phase(self):
        return self.data['phase']

    @property
    def recovery(self):
        """What recovery noted in the record: attempts, pending, error."""
        found = self.data.get('recovery')
        return found if isinstance(found, dict) else {}

    def update(self, **fields):
        self.data.update(fields, updated_at=time.time())
        write_atomically(self.path, json.dumps(self.data, indent=1))

    def remove(self):
        """Delete the record, then release its lock: the very last step."""
        for path in (self.path, _lock_path(self.path)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        _fsync_dir(os.path.dirname(self.path))
        self.release()

    def release(self):
        """Drop the lock, keep the record: it is now for recovery."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock_path(record_path):
    return record_path[:-len('.json')] + '.lock'


def _ensure_directory():
    path = directory()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def begin(**fields):
    """Write the first record of a snapshot and take its lock."""
    path = os.path.join(_ensure_directory(), '%s.json' % fields['image_id'])
    lock_fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    now = time.time()
    data = dict(fields, version=VERSION, pid=os.getpid(), started_at=now,
                updated_at=now)
    record = Record(data, path, lock_fd)
    write_atomically(path, json.dumps(data, indent=1))
    return record


def load(path):
    """Read one record; CorruptRecord if it is not a whole record."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptRecord('%s: unreadable: %s' % (path, e))
    if not isinstance(data, dict):
        raise CorruptRecord('%s: not a record' % path)
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CorruptRecord('%s: missing %s' % (path, ', '.join(missing)))
    return Record(data, path)


def paths():
    """Record files in the journal, oldest first."""
    try:
        names = os.listdir(directory())
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not name.endswith('.json'):
            continue
        path = os.path.join(directory(), name)
        try:
            found.append((os.stat(path).st_mtime, path))
        except FileNotFoundError:
            continue  # its snapshot finished since the listdir
    return [path for _mtime, path in sorted(found)]


def try_lock(record_path):
    """Take a dead snapshot's lock; None while its process still runs."""
    fd = os.open(_lock_path(record_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def held(record_path):
    """True while a live process holds the record's lock.

    Unlike ``try_lock`` it creates no lock file and keeps no lock: a
    shared lock is tried and dropped at once.  A record whose lock file is
    gone is held by no one.
    """
    try:
        fd = os.open(_lock_path(record_path), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _temp_owner(name):
    """The record path a temp file was written for; None if unknown."""
    rest = name[len(TEMP_PREFIX):]
    if '-' not in rest:
        return None
    target = rest.rsplit('-', 1)[0]
    if not target.endswith('.json'):
        return None
    return os.path.join(directory(), target)


def stray_temp_files(now=None, grace=TEMP_GRACE_SECONDS):
    """Temp files of interrupted writes: no live writer can own them.

    A temp file is stray once it is older than ``grace`` seconds and the
    record it was written for (named in it) is not held by a live
    process.  A temp file of an older release names no record: its age
    alone decides.
    """
    try:
        names = os.listdir(directory())
    except FileNotFoundError:
        return []
    now = time.time() if now is None else now
    found = []
    for name in sorted(names):
        if not name.startswith(TEMP_PREFIX):
            continue
        path = os.path.join(directory(), name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # its write just finished
        if now - st.st_mtime < grace:
            continue
        owner = _temp_owner(name)
        if owner is not None and held(owner):
            continue
        found.append(path)
    return found


def discard_lock(record_path):
    try:
        os.unlink(_lock_path(record_path))
    except FileNotFoundError:
        pass
