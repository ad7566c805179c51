"""Crash-safe records of the snapshots in flight.

nova-compute can die at any instant (OOM, a restart, a deploy).  Before a
snapshot touches anything, it writes one record: the instance, the image,
the domain's saved inactive XML, the disk and the temp paths, and the
phase it is in.  The record is rewritten at each phase and removed last, so
a record that outlives its process says exactly what to repair (see
``recovery``).

Records are JSON files in ``[snapdriver] journal_path``, written
atomically (temp file, fsync, rename, fsync of the directory) with mode
0600, because the XML can hold secrets.  Each snapshot also holds an
exclusive ``flock`` on ``<image-id>.lock`` for as long as it runs; the
kernel drops it when the process dies, however it dies, which is how
recovery tells a snapshot in flight from one whose process is gone.
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
    """Replace ``path`` with ``data``: all of it or none, mode 0600."""
    dirname = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=dirname, prefix='.tmp-')
    try:
        os.fchmod(fd, 0o600)
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


def discard_lock(record_path):
    try:
        os.unlink(_lock_path(record_path))
    except FileNotFoundError:
        pass
