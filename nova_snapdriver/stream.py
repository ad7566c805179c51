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

"""``capture_method = stream``: the running disk, read over NBD into Glance.

No temp image and no second pass: the capture and the upload are one.

1. A pull-mode backup of the root disk (``virDomainBackupBegin`` with
   ``<domainbackup mode='pull'>``, no checkpoint) exports the disk as it is
   at that instant over NBD, on a unix socket that QEMU creates in a
   directory of the work dir shared with QEMU's group only
   (``qemu_identity``: QEMU runs as a user of its own on every
   distribution).
   QEMU keeps that instant by copying each block the guest overwrites into
   a scratch file beside it (copy-before-write).  The guest is frozen, if
   quiescing, only around the begin; the domain is never undefined.
2. libnbd (a maintained client, see ``tools/host/link-libnbd``) reads the
   export.  Its allocation map (NBD block status, ``base:allocation``)
   comes first, so ranges that read as zeros are never read at all.
3. ``imagestream`` lays the image out from that map, raw or qcow2, and
   nova's image API reads it as a file whose exact size is known up front,
   hashed as it goes (``upload``).  An upload that nova retries starts
   again at the export's beginning, which is still there.
4. The backup is ended (``abortJob``: pull mode has no end of its own) and
   the scratch file and socket removed, whatever happened.

The scratch file cannot shrink on QEMU 7.2, and a copy-before-write that
cannot write fails the *guest's* write.  So the plan counts the scratch's
worst case against free space, and ``ScratchGuard`` watches it while
streaming and ends the backup, not the guest's writes, before the
filesystem fills or the scratch passes ``[snapdriver]
stream_scratch_max_mb``.

Under eventlet (nova 31 to 33 start nova-compute so), the read-ahead and
the guard are OS threads all the same, and what waits for them or for
libnbd runs in eventlet's pool of native threads (``novacompat``): the
rest of nova-compute goes on meanwhile.
"""

import os
import time
from xml.etree import ElementTree

from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import blockjob
from nova_snapdriver import capture
from nova_snapdriver import exception
from nova_snapdriver import imagestream
from nova_snapdriver import novacompat
from nova_snapdriver import progress
from nova_snapdriver import qemu_identity
from nova_snapdriver import readahead

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

SCRATCH_NAME = 'scratch.qcow2'
# NBD block status over at most this much per request (reads: readahead).
STATUS_SPAN = 1 << 30
GUARD_INTERVAL = 0.5
MiB = 1024 * 1024


def socket_dir(plan):
    """Where QEMU creates the socket: a directory its group may write."""
    return os.path.dirname(socket_path(plan))


def socket_path(plan):
    return qemu_identity.socket_path(plan.work_dir)


def scratch_path(plan):
    return os.path.join(plan.work_dir, SCRATCH_NAME)


def ours(plan):
    """Whether a running backup is this stream's: its scratch file is."""
    return lambda domain: blockjob.backup_writes_into(
        domain, plan.disk_dev, plan.work_dir)


def scratch_cap():
    """Bytes the scratch file may grow to; 0 if only free space bounds it."""
    return CONF.snapdriver.stream_scratch_max_mb * MiB


def backup_xml(guest, plan):
    """Pull-mode backup XML: the root disk exported on our unix socket."""
    root = ElementTree.Element('domainbackup', mode='pull')
    ElementTree.SubElement(root, 'server', transport='unix',
                           socket=socket_path(plan))
    disk = capture.backup_disks(root, guest, plan)
    if disk is None:
        raise exception.SnapshotError(
            reason='the domain has no disk %s to stream' % plan.disk_dev)
    ElementTree.SubElement(disk, 'scratch', file=scratch_path(plan))
    return ElementTree.tostring(root, encoding='unicode')


class Export(object):
    """An NBD export read with libnbd: a pull backup's, or qemu-nbd's.

    ``path``: the unix socket of a pull backup, whose export is ``name``.
    ``argv``: instead, an NBD server to start (``coldstream``: qemu-nbd),
    by systemd socket activation: no socket on disk, we are its only
    client, and it ends with our connection.
    """

    def __init__(self, path, name, instance=None, argv=None):
        import nbd  # libnbd's binding: only hosts that stream need it
        self._nbd = nbd
        self._ahead = None
        self.name = name
        self.instance = instance
        self.handle = nbd.NBD()
        try:
            self.handle.add_meta_context('base:allocation')
            if argv:
                self.handle.connect_systemd_socket_activation(argv)
            else:
                self.handle.set_export_name(name)
                self.handle.connect_unix(path)
            if not self.handle.can_meta_context('base:allocation'):
                raise exception.SnapshotError(
                    reason='the NBD export of %s has no allocation map'
                    % name)
            self.size = self.handle.get_size()
        except Exception:
            self.close()
            raise

    def extents(self):
        """The allocation map: ``imagestream.Extent`` covering the disk."""
        # Ranges that read as zeros are never read; a hole that does not
        # (no STATE_ZERO) is data.
        zero = self._nbd.STATE_ZERO
        found = []
        offset = 0
        while offset < self.size:
            got = []

            def collect(meta, start, entries, err):
                if meta == 'base:allocation':
                    got.extend(zip(entries[0::2], entries[1::2]))
                return 0
            self.handle.block_status(min(self.size - offset, STATUS_SPAN),
                                     offset, collect)
            if not got or got[0][0] <= 0:
                # QEMU always answers with progress; a server that does
                # not would be asked the same question forever.
                raise exception.SnapshotError(
                    reason='the NBD export of %s gave no allocation for '
                    'offset %d' % (self.name, offset))
            for length, flags in got:
                length = min(length, self.size - offset)
                if length <= 0:
                    break
                data = not flags & zero
                if found and found[-1].data == data:
                    last = found.pop()
                    found.append(imagestream.Extent(
                        last.offset, last.length + length, data))
                else:
                    found.append(imagestream.Extent(offset, length, data))
                offset += length
        return found

    def read_ahead(self, ranges):
        """A ReadAhead of ``ranges``, ended by ``close()``."""
        self._ahead = readahead.ReadAhead(self, ranges)
        return self._ahead

    def pread(self, offset, length):
        """``length`` bytes at ``offset`` (called by the ReadAhead thread)."""
        return self.handle.pread(length, offset)

    def close(self):
        """Stop the read-ahead, then close the connection and the handle.

        The handle is closed only once no thread reads on it: libnbd's
        handle lock would hold ``shutdown`` behind a stuck read, and
        closing it under a read would free what the read uses.  It waits
        for both, so natively (``novacompat.wait_natively``).
        """
        novacompat.wait_natively(self._close)

    def _close(self):
        if self._ahead is not None and not self._ahead.close():
            LOG.warning('The NBD export of %s is left open: a read on it '
                        'did not return', self.name, instance=self.instance)
            return
        handle, self.handle = self.handle, None
        if handle is None:
            return
        try:
            handle.shutdown()
        except Exception:
            pass
        close = getattr(handle, 'close', None)
        if close is not None:  # libnbd >= 1.16; before, dropping it closes
            close()


class ScratchGuard(object):
    """Ends the backup before its scratch file fills the filesystem.

    The scratch grows with the guest's writes, whether or not the export
    is being read: an upload stalled on Glance, or a long run of zeros
    that the image gets without a read, reads nothing for a while.  So a
    watcher thread (``start``/``stop``) checks every GUARD_INTERVAL s, and
    every read of the stream checks too (at most as often).  If the
    scratch passed ``stream_scratch_max_mb``, or free space fell to
    ``reserved_space_mb``, the backup is aborted (the guest's
    copy-before-write then stops, and its writes go on) and
    ``ScratchSpaceExhausted`` is kept in ``error`` and raised, on the next
    read at the latest.
    """

    def __init__(self, plan, domain, clock=time.monotonic, instance=None):
        self.plan = plan
        self.instance = instance
        self.domain = domain
        self.clock = clock
        self.last = None
        self.peak = 0
        self.error = None
        self.reserve = CONF.snapdriver.reserved_space_mb * MiB
        self.cap = scratch_cap()
        self._threading, _ = novacompat.os_threads()
        self._lock = self._threading.Lock()
        self._stopped = self._threading.Event()
        self._thread = None

    def scratch_size(self):
        try:
            st = os.stat(scratch_path(self.plan))
        except FileNotFoundError:
            return 0
        return st.st_blocks * 512

    def check(self):
        """Abort the backup and raise if the scratch is too big."""
        with self._lock:
            if self.error is not None:
                raise self.error
            now = self.clock()
            if self.last is not None and now - self.last < GUARD_INTERVAL:
                return
            self.last = now
            used = self.scratch_size()
            self.peak = max(self.peak, used)
            st = os.statvfs(self.plan.work_dir)
            free = st.f_bavail * st.f_frsize
            if not ((self.cap and used > self.cap) or free <= self.reserve):
                return
            self.error = exception.ScratchSpaceExhausted(
                path=scratch_path(self.plan), used=used,
                used_h=progress.human_size(used),
                free_h=progress.human_size(free),
                cap_h=progress.human_size(self.cap) if self.cap else 'none')
            LOG.warning('Ending the pull backup: %s', self.error,
                        instance=self.instance)
            try:
                blockjob.abort_backup(self.domain, ours=ours(self.plan),
                                      instance=self.instance)
            except Exception as e:
                # end() tries again, on a fresh connection if need be.
                LOG.warning('Aborting the pull backup failed: %s', e,
                            instance=self.instance)
            raise self.error

    def _watch(self):
        while not self._stopped.wait(GUARD_INTERVAL):
            try:
                self.check()
            except exception.ScratchSpaceExhausted:
                return
            except Exception:
                LOG.exception('Checking the scratch file %s failed',
                              scratch_path(self.plan),
                              instance=self.instance)

    def start(self):
        self._thread = self._threading.Thread(
            target=self._watch, daemon=True, name='snapdriver-scratch-guard')
        self._thread.start()

    def stop(self):
        self._stopped.set()
        if self._thread is not None:
            novacompat.wait_natively(self._thread.join, 10 * GUARD_INTERVAL)


def reader(export, plan, guard, instance=None):
    """The image as a file for nova's image API: (StreamReader, size)."""
    extents = export.extents()
    if plan.image_format == 'qcow2':
        layout = imagestream.qcow2_layout(export.size, extents)
    else:
        layout = imagestream.raw_layout(export.size, extents)
    # What will be read from the export: whole clusters for qcow2.
    data = layout.guest_bytes
    LOG.info('Streaming a %(fmt)s image of %(size)s from %(data)s of data '
             'in %(n)d extent(s) of %(vsize)s',
             {'fmt': plan.image_format,
              'size': progress.human_size(layout.size),
              'data': progress.human_size(data), 'n': len(extents),
              'vsize': progress.human_size(export.size)},
             instance=instance)

    ahead = export.read_ahead(layout.reads())

    def pread(offset, length):
        guard.check()
        try:
            return ahead.read(offset, length)
        except Exception as e:
            # The guard ended the backup under this read: say why.
            if guard.error is not None:
                raise guard.error from e
            raise
    return imagestream.StreamReader(layout, pread), layout.size


def end(driver, instance, guest, plan):
    """Abort the pull backup, then remove its scratch file and socket.

    Never raises: it runs while an error may be on its way out, and the
    driver checks afterwards, on a fresh connection, whether a backup
    still runs (then it keeps the work dir and the journal record for
    recovery).  The files stay while the backup may still hold them.
    """
    try:
        domain = novacompat.domain(guest)
        try:
            aborted = blockjob.abort_backup(domain, ours=ours(plan),
                                            instance=instance)
        except Exception as e:
            LOG.warning('Ending the pull backup failed (%(error)s); looking '
                        'the domain up again', {'error': e},
                        instance=instance)
            fresh = capture.lookup_guest(driver, instance)
            domain = fresh and novacompat.domain(fresh)
            aborted = bool(domain) and blockjob.abort_backup(
                domain, ours=ours(plan), instance=instance)
        if (domain is not None and blockjob.backup_running(domain) and
                ours(plan)(domain)):
            LOG.warning('The pull backup of %(disk)s still runs after its '
                        'abort; its scratch file is kept for recovery',
                        {'disk': plan.disk_dev}, instance=instance)
            return
    except Exception as e:
        LOG.warning('Could not end the pull backup of %(disk)s (%(error)s); '
                    'its scratch file is kept for recovery',
                    {'disk': plan.disk_dev, 'error': e}, instance=instance)
        return
    if aborted:
        LOG.debug('Ended the pull backup of %(disk)s',
                  {'disk': plan.disk_dev}, instance=instance)
    for path in (scratch_path(plan), socket_path(plan)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(socket_dir(plan))
    except OSError:
        pass  # gone already, or not empty: the work dir's removal takes it


def stream(driver, context, instance, guest, plan, step, upload):
    """Capture and upload in one: returns the number of bytes uploaded.

    ``upload(reader, size)`` sends the file-like ``reader`` to Glance.
    """
    # QEMU, a user of its own, enters the work dir (libvirt creates the
    # scratch file and hands it to QEMU) and creates the socket in a
    # directory shared with its group alone.
    os.chmod(plan.work_dir, 0o701)
    ident = qemu_identity.of_guest(guest)
    mode = qemu_identity.make_shared_dir(socket_dir(plan), ident)
    LOG.debug('The NBD socket goes into %(dir)s (mode %(mode)04o, QEMU '
              'runs as %(ident)s)', {'dir': socket_dir(plan), 'mode': mode,
                                     'ident': ident}, instance=instance)
    quiesced = False
    started = False
    export = guard = None
    try:
        if plan.quiesce:
            quiesced = capture._freeze(driver, context, instance, plan)
        try:
            novacompat.domain(guest).backupBegin(
                backup_xml(guest, plan), None, 0)
            started = True
        finally:
            if quiesced:
                capture._thaw(driver, context, instance)
        # The scratch grows from now on, read or not.
        # Checked from OS threads: the virDomain itself, not a green proxy.
        guard = ScratchGuard(
            plan, novacompat.native_domain(novacompat.domain(guest)),
            instance=instance)
        guard.start()
        # The phase stays 'streaming' to the end: the backup job runs until
        # the upload is done, and recovery must know to end it.
        step('streaming')
        export = novacompat.wait_natively(
            Export, socket_path(plan), plan.disk_dev, instance)
        image, size = novacompat.wait_natively(
            reader, export, plan, guard, instance)
        step('streaming', size=size)
        try:
            upload(image, size)
        except Exception as e:
            # The image API may wrap what a read raised: the guard's
            # error names the option that bounds the scratch.
            if guard.error is not None and e is not guard.error:
                raise guard.error from e
            raise
        LOG.info('Streamed %(size)s; the scratch file peaked at %(peak)s',
                 {'size': progress.human_size(size),
                  'peak': progress.human_size(guard.peak)},
                 instance=instance)
        return size
    finally:
        # The backup ends first: QEMU then drops the export's connection,
        # so a read stuck on it fails at once and the reader is joined
        # quickly; the guard watches the scratch until the abort was sent.
        if started:
            end(driver, instance, guest, plan)
        if export is not None:
            export.close()
        if guard is not None:
            guard.stop()
