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

"""stream: a pull backup of the running disk, read over NBD into Glance.

libnbd is a fake ``nbd`` module put in ``sys.modules`` (the real binding is
only on hosts that stream): its handle serves a disk held in memory, with an
allocation map given as NBD ``base:allocation`` entries.  The domain is a
FakeDomain (autospec'd virDomain) behind nova's real Guest, on which a pull
backup is a job that ``abortJob`` ends; the driver is the real
SnapLibvirtDriver, so a quiesce is nova's own fsFreeze/fsThaw.  The scratch
file and the work dir are real files in a temp dir; only the low free space
case fakes ``os.statvfs``.
"""

import dataclasses
import os
import stat
import subprocess
import sys
import time
import types
from unittest import mock
from xml.etree import ElementTree

import fixtures
import libvirt

from nova_snapdriver import blockjob
from nova_snapdriver import chain
from nova_snapdriver import coldstream
from nova_snapdriver import exception
from nova_snapdriver import imagestream
from nova_snapdriver import novacompat
from nova_snapdriver import plan as snapshot_plan
from nova_snapdriver import readahead
from nova_snapdriver import stream
from tests.unit import base

DISK = '/var/lib/nova/instances/%s/disk' % base.INSTANCE_UUID
MiB = base.MiB
KiB = 1024
CLUSTER = 64 * KiB

# NBD's base:allocation flags, as libnbd names them.
STATE_HOLE = 1
STATE_ZERO = 2

# A plan for capture_method stream; each test gives it its own work dir.
PLAN = snapshot_plan.SnapshotPlan(
    image_id=base.IMAGE_ID, image_name='snap', live=True, power_state=1,
    disk_dev=base.DISK_DEV, disk_path=DISK, disk_format='qcow2',
    chain=chain.Node(DISK, 'qcow2'), virtual_size=base.DISK_SIZE,
    image_format='raw', compress=False, quiesce=False,
    require_quiesce=False, work_dir=None, space_needed=1,
    capture_method='stream')

BACKUP_RUNNING = {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                  'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
NO_JOB = {'type': libvirt.VIR_DOMAIN_JOB_NONE}


def disk_bytes(entries):
    """A disk for the allocation map ``entries``, ``(length, flags)`` pairs.

    Ranges flagged STATE_ZERO hold zeros, as NBD reads them; the others a
    pattern that depends on the offset (not a multiple of 512 long).
    """
    pattern = bytes((n * 7 + 1) % 251 for n in range(4099))
    data = bytearray()
    for length, flags in entries:
        if flags & STATE_ZERO:
            data += bytes(length)
        else:
            start = len(data) % len(pattern)
            chunk = pattern * (2 + length // len(pattern))
            data += chunk[start:start + length]
    return bytes(data)


class NBDError(Exception):
    """nbd.Error."""


class FakeNBD(object):
    """A libnbd handle on an export whose disk is ``data``.

    ``entries``: the allocation map, ``(length, flags)`` pairs in order.
    Block status answers like QEMU's NBD server: the map's entries clipped
    to the range asked, preceded by a reply for another meta context;
    ``replies`` instead scripts the base:allocation entries, one flat list
    per call.  ``log`` records every ``pread`` as ``('pread', offset,
    count)``.
    """

    def __init__(self, data, entries, allocation_map=True, log=None):
        self.data = data
        self.entries = entries
        self.allocation_map = allocation_map
        self.log = [] if log is None else log
        self.replies = None
        self.contexts = []
        self.export_name = self.socket = None
        self.status_calls = []
        self.shutdown_error = None
        self.shut_down = False
        self.read_error = None

    def add_meta_context(self, name):
        self.contexts.append(name)

    def set_export_name(self, name):
        self.export_name = name

    def connect_unix(self, path):
        self.socket = path

    def can_meta_context(self, name):
        return self.allocation_map and name in self.contexts

    def get_size(self):
        return len(self.data)

    def block_status(self, count, offset, extent, flags=0):
        self.status_calls.append((count, offset))
        # Another context's reply: not part of the allocation map.
        extent('qemu:allocation-depth', offset, [count, 0], 0)
        if self.replies is not None:
            flat = self.replies.pop(0)
        else:
            flat = []
            start = 0
            for length, kind in self.entries:
                lo = max(start, offset)
                hi = min(start + length, offset + count)
                if lo < hi:
                    flat += [hi - lo, kind]
                start += length
        extent('base:allocation', offset, flat, 0)
        return 0

    def pread(self, count, offset, flags=0):
        assert 0 < count and offset + count <= len(self.data), (
            offset, count)
        self.log.append(('pread', offset, count))
        if self.read_error is not None:
            raise self.read_error
        return bytearray(self.data[offset:offset + count])

    def shutdown(self, flags=0):
        # The read-ahead thread is gone before its handle is shut down.
        threading, _ = novacompat.os_threads()
        assert not [t for t in threading.enumerate()
                    if t.name == 'snapdriver-read-ahead']
        self.shut_down = True
        if self.shutdown_error is not None:
            raise self.shutdown_error


class WorkDirTestCase(base.TestCase):
    """A snapshot's work dir, real and empty, and its plan."""

    def setUp(self):
        super(WorkDirTestCase, self).setUp()
        self.work_dir = os.path.join(self.snapshots_dir, base.IMAGE_ID)
        os.makedirs(self.work_dir)
        self.plan = dataclasses.replace(PLAN, work_dir=self.work_dir)
        self.scratch = os.path.join(self.work_dir, 'scratch.qcow2')
        # QEMU creates the socket in a directory shared with its group.
        self.export_dir = os.path.join(self.work_dir, 'nbd')
        self.socket = os.path.join(self.export_dir, 'sock')


class NBDTestCase(WorkDirTestCase):
    """A fake ``nbd`` module whose NBD() is ``self.handle``."""

    def setUp(self):
        super(NBDTestCase, self).setUp()
        self.handle = None
        module = types.ModuleType('nbd')
        module.NBD = lambda: self.handle
        module.Error = NBDError
        module.STATE_HOLE = STATE_HOLE
        module.STATE_ZERO = STATE_ZERO
        patcher = mock.patch.dict(sys.modules, nbd=module)
        patcher.start()
        self.addCleanup(patcher.stop)

    def export(self, entries, **kw):
        """stream.Export on a FakeNBD serving the disk of ``entries``."""
        self.handle = FakeNBD(disk_bytes(entries), entries, **kw)
        return stream.Export(stream.socket_path(self.plan),
                             self.plan.disk_dev)


class ExportTestCase(NBDTestCase):

    def test_connects_to_the_disk_on_the_socket_with_allocation_map(self):
        export = self.export([(4 * KiB, 0)])

        self.assertEqual(self.socket, self.handle.socket)
        self.assertEqual('vda', self.handle.export_name)
        self.assertEqual(['base:allocation'], self.handle.contexts)
        self.assertEqual(4 * KiB, export.size)

    def test_export_without_allocation_map_is_refused(self):
        exc = self.assertRaises(exception.SnapshotError, self.export,
                                [(4 * KiB, 0)], allocation_map=False)

        self.assertEqual('Snapshot failed: the NBD export of vda has no '
                         'allocation map (nova-snapdriver SnapshotError: see '
                         'Troubleshooting in its documentation)', str(exc))

    def test_adjacent_extents_of_a_kind_are_merged(self):
        export = self.export([(4 * KiB, 0), (8 * KiB, 0),
                              (4 * KiB, STATE_ZERO | STATE_HOLE),
                              (12 * KiB, STATE_ZERO),
                              (4 * KiB, 0)])

        self.assertEqual([imagestream.Extent(0, 12 * KiB, True),
                          imagestream.Extent(12 * KiB, 16 * KiB, False),
                          imagestream.Extent(28 * KiB, 4 * KiB, True)],
                         export.extents())

    def test_a_hole_that_does_not_read_as_zeros_is_data(self):
        export = self.export([(4 * KiB, STATE_HOLE), (4 * KiB, STATE_ZERO),
                              (4 * KiB, STATE_HOLE),
                              (4 * KiB, STATE_HOLE | STATE_ZERO)])

        self.assertEqual([imagestream.Extent(0, 4 * KiB, True),
                          imagestream.Extent(4 * KiB, 4 * KiB, False),
                          imagestream.Extent(8 * KiB, 4 * KiB, True),
                          imagestream.Extent(12 * KiB, 4 * KiB, False)],
                         export.extents())

    def test_an_entry_past_the_end_of_the_disk_is_clipped(self):
        export = self.export([(3000, 0)])
        self.handle.replies = [[1000, 0, 5000, STATE_ZERO]]

        self.assertEqual([imagestream.Extent(0, 1000, True),
                          imagestream.Extent(1000, 2000, False)],
                         export.extents())
        self.assertEqual([(3000, 0)], self.handle.status_calls)

    def test_a_disk_larger_than_the_span_takes_several_requests(self):
        self.useFixture(fixtures.MockPatchObject(stream, 'STATUS_SPAN',
                                                 4096))
        export = self.export([(6000, 0), (3000, STATE_ZERO), (1000, 0)])

        extents = export.extents()

        self.assertEqual([(4096, 0), (4096, 4096), (1808, 8192)],
                         self.handle.status_calls)
        # Merged across requests: the map is the disk's, not the spans'.
        self.assertEqual([imagestream.Extent(0, 6000, True),
                          imagestream.Extent(6000, 3000, False),
                          imagestream.Extent(9000, 1000, True)], extents)

    def test_a_server_answering_less_than_asked_is_asked_again(self):
        export = self.export([(8 * KiB, 0)])
        self.handle.replies = [[2 * KiB, 0], [6 * KiB, STATE_ZERO]]

        self.assertEqual([imagestream.Extent(0, 2 * KiB, True),
                          imagestream.Extent(2 * KiB, 6 * KiB, False)],
                         export.extents())
        self.assertEqual([(8 * KiB, 0), (6 * KiB, 2 * KiB)],
                         self.handle.status_calls)

    def test_a_reply_without_allocation_is_an_error_not_a_loop(self):
        export = self.export([(8 * KiB, 0)])
        self.handle.replies = [[2 * KiB, 0], []]

        exc = self.assertRaises(exception.SnapshotError, export.extents)

        self.assertIn('gave no allocation for offset 2048', str(exc))
        self.assertEqual(2, len(self.handle.status_calls))

    def test_a_zero_length_entry_is_an_error_not_a_loop(self):
        export = self.export([(8 * KiB, 0)])
        self.handle.replies = [[0, 0]]

        self.assertRaises(exception.SnapshotError, export.extents)

    def test_a_refused_export_closes_its_connection(self):
        self.assertRaises(exception.SnapshotError, self.export,
                          [(4 * KiB, 0)], allocation_map=False)

        self.assertTrue(self.handle.shut_down)

    def test_pread_returns_the_disk(self):
        export = self.export([(8 * KiB, 0)])

        self.assertEqual(self.handle.data[100:400], export.pread(100, 300))
        self.assertEqual([('pread', 100, 300)], self.handle.log)

    def test_close_stops_the_read_ahead_first(self):
        export = self.export([(8 * KiB, 0)])
        ahead = export.read_ahead([(0, 8 * KiB)])
        ahead.read(0, KiB)
        calls = mock.Mock()
        calls.attach_mock(mock.Mock(wraps=ahead.close), 'close')
        calls.attach_mock(mock.Mock(wraps=self.handle.shutdown), 'shutdown')
        ahead.close = calls.close
        self.handle.shutdown = calls.shutdown

        export.close()

        self.assertEqual([mock.call.close(), mock.call.shutdown()],
                         calls.mock_calls)

    def test_close_shuts_the_connection_down(self):
        export = self.export([(4 * KiB, 0)])

        export.close()

        self.assertTrue(self.handle.shut_down)

    def test_close_closes_the_handle_once_shut_down(self):
        export = self.export([(4 * KiB, 0)])
        self.handle.close = mock.Mock()

        export.close()
        export.close()

        self.handle.close.assert_called_once_with()
        self.assertIsNone(export.handle)

    def test_a_read_that_never_returns_leaves_the_handle_alone(self):
        # Closing a libnbd handle under a read would free what it uses;
        # shutdown would wait behind it, holding the handle's lock.
        export = self.export([(4 * KiB, 0)])
        export.read_ahead([(0, 4 * KiB)])
        self.handle.close = mock.Mock()
        self.useFixture(fixtures.MockPatchObject(
            export._ahead, 'close', return_value=False))

        export.close()

        self.assertFalse(self.handle.shut_down)
        self.handle.close.assert_not_called()
        self.assertIn('left open: a read on it did not return',
                      self.logs.output)

    def test_close_swallows_a_failing_shutdown(self):
        export = self.export([(4 * KiB, 0)])
        self.handle.shutdown_error = NBDError('connection reset by peer')

        self.assertIsNone(export.close())
        self.assertTrue(self.handle.shut_down)


class FakeGuard(object):
    """A ScratchGuard whose ``check()`` only says, in ``log``, it ran."""

    def __init__(self, log, peak=0):
        self.log = log
        self.peak = peak
        self.error = None
        self.watching = None

    def check(self):
        self.log.append('check')

    def start(self):
        self.watching = True

    def stop(self):
        self.watching = False


def read_all(image):
    chunks = []
    while True:
        chunk = image.read(imagestream.MAX_READ)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


class ReaderTestCase(NBDTestCase):

    # Not a multiple of the cluster size, nor of 512 bytes.
    ENTRIES = [(CLUSTER + 100, 0), (3 * CLUSTER, STATE_ZERO | STATE_HOLE),
               (5000, STATE_HOLE), (2 * CLUSTER - 5000, STATE_ZERO),
               (CLUSTER + 77, 0)]

    def _read(self, image_format):
        log = []
        export = self.export(self.ENTRIES, log=log)
        plan = dataclasses.replace(self.plan, image_format=image_format)

        image, size = stream.reader(export, plan, FakeGuard(log))

        self.assertIsInstance(image, imagestream.StreamReader)
        self.assertEqual(size, image.size)
        data = read_all(image)
        self.assertEqual(size, len(data))
        # The scratch was checked before the export was first read, and
        # once for every range the stream read (the export itself is
        # asked ahead, so its reads are not one for one with the checks).
        reads = [entry for entry in log if entry != 'check']
        self.assertEqual('check', log[0])
        self.assertEqual(3, log.count('check'))
        return data, reads

    def test_raw_image_is_the_disk_and_reads_only_its_data(self):
        data, reads = self._read('raw')

        self.assertEqual(self.handle.data, data)
        self.assertEqual(len(self.handle.data), len(data))
        self.assertEqual(
            [('pread', 0, CLUSTER + 100),
             ('pread', 4 * CLUSTER + 100, 5000),
             ('pread', 6 * CLUSTER + 100, CLUSTER + 77)], reads)
        self.assertIn('Streaming a raw image of', self.logs.output)

    def test_qcow2_image_reads_whole_clusters_and_holds_the_disk(self):
        data, reads = self._read('qcow2')

        self.assertEqual(imagestream.QCOW2_MAGIC, data[:4])
        self.assertEqual(0, len(data) % CLUSTER)
        self.assertTrue(all(offset % CLUSTER == 0
                            for _, offset, _ in reads))
        # The real qemu-img finds the image equal to the disk.
        image = os.path.join(self.tmp, 'image.qcow2')
        disk = os.path.join(self.tmp, 'disk.raw')
        with open(image, 'wb') as f:
            f.write(data)
        with open(disk, 'wb') as f:
            f.write(self.handle.data)
        result = subprocess.run(
            ['qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw', image, disk],
            capture_output=True, text=True)
        self.assertEqual(0, result.returncode,
                         result.stdout + result.stderr)
        self.assertIn('Streaming a qcow2 image of', self.logs.output)


class ReaderGuardTestCase(NBDTestCase):

    def test_a_read_the_guard_ended_raises_the_guards_error(self):
        export = self.export([(4 * KiB, 0)])
        guard = FakeGuard([])
        image, _size = stream.reader(export, self.plan, guard)
        guard.error = exception.ScratchSpaceExhausted(
            path=self.scratch, used=2 * MiB, used_h='2.0 MiB',
            free_h='1.0 GiB', cap_h='1.0 MiB')
        self.handle.read_error = NBDError('server gone')

        exc = self.assertRaises(exception.ScratchSpaceExhausted,
                                image.read, KiB)

        self.assertIs(guard.error, exc)
        self.assertIsInstance(exc.__cause__, NBDError)

    def test_a_read_that_fails_otherwise_raises_its_own_error(self):
        export = self.export([(4 * KiB, 0)])
        image, _size = stream.reader(export, self.plan, FakeGuard([]))
        self.handle.read_error = NBDError('server gone')

        self.assertRaises(NBDError, image.read, KiB)


class BackupXmlTestCase(WorkDirTestCase):

    def test_a_domain_without_the_root_disk_is_an_error(self):
        domain = base.FakeDomain(base.file_disk_xml(DISK, dev='vdb'))

        exc = self.assertRaises(exception.SnapshotError, stream.backup_xml,
                                self.make_guest(domain), self.plan)

        self.assertIn('no disk vda to stream', str(exc))

    def test_pull_backup_of_the_root_disk_on_our_socket(self):
        domain = base.FakeDomain(
            base.file_disk_xml(DISK) +
            base.file_disk_xml('/var/lib/data.img', fmt='raw', dev='vdb'))

        root = ElementTree.fromstring(
            stream.backup_xml(self.make_guest(domain), self.plan))

        self.assertEqual('domainbackup', root.tag)
        self.assertEqual({'mode': 'pull'}, root.attrib)
        self.assertEqual([{'transport': 'unix', 'socket': self.socket}],
                         [s.attrib for s in root.findall('server')])
        vda, vdb = root.findall('disks/disk')
        self.assertEqual({'name': 'vda', 'backup': 'yes', 'type': 'file'},
                         vda.attrib)
        self.assertEqual([('scratch', {'file': self.scratch})],
                         [(s.tag, s.attrib) for s in vda])
        self.assertEqual({'name': 'vdb', 'backup': 'no'}, vdb.attrib)
        self.assertEqual([], list(vdb))


class PullBackupTestCase(WorkDirTestCase):
    """A domain on which a pull backup is a job, and its work dir."""

    def setUp(self):
        super(PullBackupTestCase, self).setUp()
        self.domain = base.FakeDomain(base.file_disk_xml(DISK))
        self.backup = {'running': False}
        self.pull_backup(self.domain.mock)
        self.guest = self.make_guest(self.domain)
        self.conn = base.FakeConnection(self.domain)
        self.driver = self.make_driver()
        self.connect_host(self.driver, self.conn)
        self.instance = self.make_instance(hw_qemu_guest_agent='yes')
        self.clock = self.fake_capture_clock()

    def pull_backup(self, handle):
        """On ``handle``, backupBegin starts the job as QEMU would."""
        def begin(xml, checkpoint, flags):
            self.backup['running'] = True
            os.makedirs(self.export_dir, exist_ok=True)
            for path in (self.scratch, self.socket):
                with open(path, 'wb') as f:
                    f.write(b'made by QEMU')

        def job_stats(flags=0):
            return BACKUP_RUNNING if self.backup['running'] else NO_JOB

        def backup_xml(flags=0):
            if not self.backup['running']:
                raise base.libvirt_error(libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
                                         'no domain backup job present')
            return ("<domainbackup mode='pull'><disks><disk name='vda' "
                    "backup='yes' type='file'><scratch file='%s'/></disk>"
                    "</disks></domainbackup>" % self.scratch)
        handle.backupBegin.side_effect = begin
        handle.jobStats.side_effect = job_stats
        handle.backupGetXMLDesc.side_effect = backup_xml
        handle.abortJob.side_effect = lambda: self.backup.update(
            running=False)

    def begin_backup(self):
        self.domain.mock.backupBegin('<domainbackup/>', None, 0)
        self.domain.mock.reset_mock()

    def assert_files_removed(self):
        self.assertEqual([], os.listdir(self.work_dir))


class EndTestCase(PullBackupTestCase):

    def _end(self):
        stream.end(self.driver, self.instance, self.guest, self.plan)

    def test_aborts_the_backup_and_removes_scratch_and_socket(self):
        self.begin_backup()

        self._end()

        self.domain.mock.abortJob.assert_called_once_with()
        self.assertFalse(self.backup['running'])
        self.assert_files_removed()
        self.assertIn('Ended the pull backup of vda', self.logs.output)
        self.driver._host.get_guest.assert_not_called()

    def test_a_failed_abort_is_done_again_on_a_fresh_lookup(self):
        self.begin_backup()
        old = self.domain.restart_libvirtd()
        self.pull_backup(self.domain.mock)

        self._end()

        old.abortJob.assert_not_called()
        self.driver._host.get_guest.assert_called_once_with(self.instance)
        self.domain.mock.abortJob.assert_called_once_with()
        self.assertFalse(self.backup['running'])
        self.assert_files_removed()
        self.assertIn('Ending the pull backup failed', self.logs.output)
        self.assertIn('client socket is closed', self.logs.output)
        self.assertIn('Ended the pull backup of vda', self.logs.output)

    def test_a_domain_gone_on_the_fresh_lookup_has_nothing_to_end(self):
        self.begin_backup()
        self.domain.restart_libvirtd()
        del self.conn.domains[base.INSTANCE_UUID]

        self._end()

        self.domain.mock.abortJob.assert_not_called()
        self.assert_files_removed()
        self.assertIn('Ending the pull backup failed', self.logs.output)
        self.assertNotIn('Ended the pull backup', self.logs.output)

    def test_no_backup_left_and_no_files_is_fine(self):
        self._end()

        self.domain.mock.abortJob.assert_not_called()
        self.assert_files_removed()
        self.assertNotIn('Ended the pull backup', self.logs.output)

    def test_a_backup_still_running_after_its_abort_keeps_its_files(self):
        self.begin_backup()
        self.domain.mock.abortJob.side_effect = None
        self.useFixture(fixtures.MockPatchObject(
            blockjob, 'abort_backup', return_value=True))

        self._end()

        self.assertTrue(self.backup['running'])
        self.assertEqual(['nbd', 'scratch.qcow2'],
                         sorted(os.listdir(self.work_dir)))
        self.assertEqual(['sock'], os.listdir(self.export_dir))
        self.assertIn('still runs after its abort', self.logs.output)

    def test_libvirtd_gone_for_good_is_logged_not_raised(self):
        self.begin_backup()
        self.domain.restart_libvirtd()
        self.useFixture(fixtures.MockPatchObject(
            stream.capture, 'lookup_guest',
            side_effect=exception.LibvirtUnreachable(
                timeout=60, instance_uuid=base.INSTANCE_UUID,
                reason='Connection refused')))

        self._end()

        self.assertEqual(['nbd', 'scratch.qcow2'],
                         sorted(os.listdir(self.work_dir)))
        self.assertIn('Could not end the pull backup of vda',
                      self.logs.output)

    def test_a_backup_that_is_not_ours_is_never_aborted(self):
        # Ours ended (the guard aborted it); someone else's began since:
        # abortJob would abort whichever runs.
        self.begin_backup()
        other = os.path.join(self.tmp, 'someone-elses-scratch.qcow2')
        self.domain.mock.backupGetXMLDesc.side_effect = lambda flags=0: (
            "<domainbackup mode='pull'><disks><disk name='vda' backup='yes'"
            " type='file'><scratch file='%s'/></disk></disks>"
            "</domainbackup>" % other)

        self._end()

        self.domain.mock.abortJob.assert_not_called()
        self.assertTrue(self.backup['running'])
        self.assertIn("A backup job that is not this snapshot's runs",
                      self.logs.output)

    def test_only_the_scratch_and_socket_are_removed(self):
        self.begin_backup()
        os.unlink(self.socket)
        other = os.path.join(self.work_dir, 'image')
        base.make_raw(other, size=KiB)

        self._end()

        self.assertEqual(['image'], os.listdir(self.work_dir))


class ScratchGuardTestCase(PullBackupTestCase):

    def setUp(self):
        super(ScratchGuardTestCase, self).setUp()
        self.flags(reserved_space_mb=0, stream_scratch_max_mb=0,
                   group='snapdriver')
        self.begin_backup()
        self.clock = base.FakeClock(now=100.0)
        self.abort = self.useFixture(fixtures.MockPatchObject(
            blockjob, 'abort_backup', wraps=blockjob.abort_backup)).mock

    def _guard(self):
        return stream.ScratchGuard(self.plan, self.domain.mock,
                                   clock=self.clock)

    def _scratch(self, allocated, apparent=0):
        """The scratch file: ``allocated`` bytes written, then sparse."""
        with open(self.scratch, 'wb') as f:
            f.write(b'\x01' * allocated)
            f.truncate(max(allocated, apparent))

    def _free(self, free_bytes):
        self.useFixture(fixtures.MockPatchObject(
            os, 'statvfs', return_value=mock.Mock(
                f_bavail=free_bytes // 4096, f_frsize=4096)))

    def _assert_exhausted(self, guard, used_h, free_h, cap_h):
        exc = self.assertRaises(exception.ScratchSpaceExhausted, guard.check)

        self.abort.assert_called_once_with(self.domain.mock, ours=mock.ANY,
                                           instance=None)
        self.domain.mock.abortJob.assert_called_once_with()
        self.assertFalse(self.backup['running'])
        message = str(exc)
        self.assertIn('[snapdriver] stream_scratch_max_mb', message)
        self.assertIn('scratch file %s reached %s' % (self.scratch, used_h),
                      message)
        if free_h is not None:
            self.assertIn('with %s left free' % free_h, message)
        self.assertIn('(cap: %s)' % cap_h, message)
        return exc

    def test_checks_at_most_every_guard_interval(self):
        self.assertEqual(0.5, stream.GUARD_INTERVAL)
        guard = self._guard()
        self._scratch(MiB)
        guard.check()
        self.assertEqual(MiB, guard.peak)

        self._scratch(3 * MiB)
        self.clock.now = 100.25
        guard.check()
        self.assertEqual(MiB, guard.peak)

        self.clock.now = 100.5
        guard.check()
        self.assertEqual(3 * MiB, guard.peak)

    def test_the_watcher_ends_the_backup_while_nothing_reads(self):
        # An upload stalled on Glance reads nothing; the guest writes on.
        self.flags(stream_scratch_max_mb=1, group='snapdriver')
        self._scratch(2 * MiB)
        guard = stream.ScratchGuard(self.plan, self.domain.mock)

        guard.start()
        for _ in range(100):
            if not self.backup['running']:
                break
            time.sleep(0.05)
        guard.stop()

        self.assertFalse(self.backup['running'])
        self.assertIsInstance(guard.error, exception.ScratchSpaceExhausted)
        self.assertFalse(guard._thread.is_alive())
        # The next read raises the same error; nothing is aborted twice.
        exc = self.assertRaises(exception.ScratchSpaceExhausted, guard.check)
        self.assertIs(guard.error, exc)
        self.abort.assert_called_once_with(self.domain.mock, ours=mock.ANY,
                                           instance=None)

    def test_a_watcher_within_bounds_stops_when_told(self):
        self.flags(stream_scratch_max_mb=8, group='snapdriver')
        self._scratch(MiB)
        guard = stream.ScratchGuard(self.plan, self.domain.mock)

        guard.start()
        time.sleep(2 * stream.GUARD_INTERVAL)
        guard.stop()

        self.assertFalse(guard._thread.is_alive())
        self.assertIsNone(guard.error)
        self.assertEqual(MiB, guard.peak)
        self.assertTrue(self.backup['running'])

    def test_a_failed_abort_still_raises_the_space_error(self):
        self.flags(stream_scratch_max_mb=1, group='snapdriver')
        self._scratch(2 * MiB)
        self.abort.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, 'client socket is closed')

        self.assertRaises(exception.ScratchSpaceExhausted,
                          self._guard().check)

        self.assertIn('Aborting the pull backup failed', self.logs.output)

    def test_within_bounds_nothing_is_aborted_and_the_peak_is_kept(self):
        self.flags(stream_scratch_max_mb=8, group='snapdriver')
        guard = self._guard()
        self.assertEqual(0, guard.peak)
        for now, size in ((100, 2 * MiB), (101, 5 * MiB), (102, MiB)):
            self._scratch(size)
            self.clock.now = now
            guard.check()

        self.assertEqual(5 * MiB, guard.peak)
        self.domain.mock.abortJob.assert_not_called()
        self.assertTrue(self.backup['running'])

    def test_no_scratch_file_counts_as_empty(self):
        os.unlink(self.scratch)
        guard = self._guard()

        guard.check()

        self.assertEqual(0, guard.peak)
        self.domain.mock.abortJob.assert_not_called()

    def test_the_scratch_counts_what_it_allocates_not_its_length(self):
        self.flags(stream_scratch_max_mb=1, group='snapdriver')
        self._scratch(0, apparent=64 * MiB)
        guard = self._guard()

        guard.check()

        self.assertLess(guard.peak, MiB)
        self.domain.mock.abortJob.assert_not_called()

    def test_scratch_past_its_cap_ends_the_backup(self):
        self.flags(stream_scratch_max_mb=1, group='snapdriver')
        self._scratch(2 * MiB)
        guard = self._guard()

        exc = self._assert_exhausted(guard, '2.0 MiB', None, '1.0 MiB')

        self.assertEqual(2 * MiB, exc.kwargs['used'])
        self.assertEqual(2 * MiB, guard.peak)

    def test_free_space_at_the_reserve_ends_the_backup(self):
        self.flags(reserved_space_mb=16, group='snapdriver')
        self._scratch(MiB)
        self._free(16 * MiB)

        self._assert_exhausted(self._guard(), '1.0 MiB', '16.0 MiB', 'none')

    def test_free_space_below_the_reserve_ends_the_backup_under_its_cap(
            self):
        self.flags(reserved_space_mb=16, stream_scratch_max_mb=100,
                   group='snapdriver')
        self._scratch(MiB)
        self._free(MiB)

        self._assert_exhausted(self._guard(), '1.0 MiB', '1.0 MiB',
                               '100.0 MiB')

    def test_free_space_just_above_the_reserve_goes_on(self):
        self.flags(reserved_space_mb=16, group='snapdriver')
        self._scratch(MiB)
        self._free(16 * MiB + 4096)
        guard = self._guard()

        guard.check()

        self.domain.mock.abortJob.assert_not_called()
        self.assertTrue(self.backup['running'])


class FakeExport(object):
    """stream.Export over a disk in memory: all data, no holes."""

    def __init__(self, data, calls):
        self.data = data
        self.size = len(data)
        self.calls = calls
        self.ahead = None

    def extents(self):
        return [imagestream.Extent(0, self.size, True)]

    def read_ahead(self, ranges):
        self.ahead = readahead.ReadAhead(self, ranges)
        return self.ahead

    def pread(self, offset, length):
        return self.data[offset:offset + length]

    def close(self):
        if self.ahead is not None:
            self.ahead.close()
        self.calls.close()


class StreamTestCase(PullBackupTestCase):

    def setUp(self):
        super(StreamTestCase, self).setUp()
        self.data = disk_bytes([(3 * MiB + 123, 0)])
        self.step = mock.Mock()
        self.uploaded = []
        self.upload_error = None
        # What reaches libvirt, the journal and the export, in order.
        self.calls = mock.Mock()
        self.calls.attach_mock(self.domain.mock, 'domain')
        self.calls.attach_mock(self.step, 'step')
        self.export = self.useFixture(fixtures.MockPatchObject(
            stream, 'Export', side_effect=lambda path, name, instance: (
                FakeExport(self.data, self.calls)))).mock
        self.guard = self.useFixture(fixtures.MockPatchObject(
            stream, 'ScratchGuard',
            side_effect=lambda plan, domain, instance=None: FakeGuard(
                [], peak=MiB))).mock
        self.end = self.useFixture(fixtures.MockPatchObject(
            stream, 'end', wraps=stream.end)).mock
        os.chmod(self.work_dir, 0o700)

    def _upload(self, image, size):
        self.calls.upload(size)
        self.uploaded.append((read_all(image), size))
        if self.upload_error is not None:
            raise self.upload_error

    def _stream(self, **plan_fields):
        plan = dataclasses.replace(self.plan, **plan_fields)
        return stream.stream(self.driver, self.context, self.instance,
                             self.guest, plan, self.step, self._upload)

    def _changes(self):
        """What the stream did, the domain's reads left out."""
        return [c for c in self.calls.mock_calls
                if c[0].split('.')[-1] not in ('jobStats', 'XMLDesc',
                                               'backupGetXMLDesc')]

    def test_streams_the_disk_and_ends_the_backup(self):
        size = self._stream()

        self.assertEqual(len(self.data), size)
        self.assertEqual([(self.data, size)], self.uploaded)
        begin = mock.call.domain.backupBegin(mock.ANY, None, 0)
        self.assertEqual(
            [begin, mock.call.step('streaming'),
             mock.call.step('streaming', size=size), mock.call.upload(size),
             # The backup ends before the export closes: a read stuck on
             # it then fails at once.
             mock.call.domain.abortJob(), mock.call.close()],
            self._changes())
        self.assertEqual(stream.backup_xml(self.guest, self.plan),
                         self.domain.mock.backupBegin.call_args.args[0])
        self.export.assert_called_once_with(self.socket, 'vda',
                                            self.instance)
        self.guard.assert_called_once_with(self.plan, self.domain.mock,
                                           instance=self.instance)
        self.assertFalse(self.backup['running'])
        self.assert_files_removed()
        self.assertEqual(0o701, stat.S_IMODE(os.stat(self.work_dir).st_mode))
        self.assertIn('Streamed 3.0 MiB; the scratch file peaked at '
                      '1.0 MiB', self.logs.output)

    def test_qemu_of_another_user_gets_a_socket_dir_of_its_group(self):
        # libvirt-qemu (64055) runs QEMU; nova-compute is in its group.
        xml = self.domain.xml
        self.domain.xml = lambda flags=0: xml(flags).replace(
            '</devices>', "</devices><seclabel type='dynamic' model='dac' "
            "relabel='yes'><label>+64055:+64055</label></seclabel>")
        made = {}

        def chown(path, uid, gid):
            made['chown'] = (path, uid, gid)
            made['mode'] = stat.S_IMODE(os.stat(path).st_mode)
        self.useFixture(fixtures.MockPatch('os.geteuid', return_value=120))
        self.useFixture(fixtures.MockPatch('os.chown', side_effect=chown))
        mode = self.useFixture(fixtures.MockPatch(
            'os.chmod', wraps=os.chmod)).mock

        self._stream()

        self.assertEqual((self.export_dir, -1, 64055), made['chown'])
        self.assertEqual(0o700, made['mode'])  # private until handed over
        mode.assert_any_call(self.export_dir, 0o730)
        self.assert_files_removed()

    def test_quiesce_freezes_only_around_the_backup_begin(self):
        self.assertEqual(len(self.data), self._stream(quiesce=True))

        self.assertEqual(
            ['domain.fsFreeze', 'domain.backupBegin', 'domain.fsThaw',
             'step', 'step', 'upload', 'domain.abortJob', 'close'],
            [c[0] for c in self._changes()])

    def test_a_failed_begin_is_thawed_raised_and_not_ended(self):
        error = base.libvirt_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                                   'backup is not supported')
        self.domain.mock.backupBegin.side_effect = error

        exc = self.assertRaises(libvirt.libvirtError, self._stream,
                                quiesce=True)

        self.assertIs(error, exc)
        self.assertEqual(
            ['domain.fsFreeze', 'domain.backupBegin', 'domain.fsThaw'],
            [c[0] for c in self._changes()])
        self.end.assert_not_called()
        self.export.assert_not_called()
        self.step.assert_not_called()

    def test_a_failed_freeze_not_required_streams_unquiesced(self):
        self.domain.mock.fsFreeze.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE)

        self.assertEqual(len(self.data), self._stream(quiesce=True))

        self.domain.mock.fsThaw.assert_not_called()
        self.assertIn('Skipping quiescing instance', self.logs.output)
        self.assert_files_removed()

    def test_a_failed_upload_closes_the_export_and_ends_the_backup(self):
        self.upload_error = IOError('Glance went away')

        exc = self.assertRaises(IOError, self._stream)

        self.assertIs(self.upload_error, exc)
        self.assertEqual(['upload', 'domain.abortJob', 'close'],
                         [c[0] for c in self._changes()][-3:])
        self.end.assert_called_once_with(self.driver, self.instance,
                                         self.guest, self.plan)
        self.assertFalse(self.backup['running'])
        self.assert_files_removed()

    def test_the_guards_error_wins_over_what_the_image_api_made_of_it(
            self):
        guards = []
        self.guard.side_effect = (
            lambda plan, domain, instance=None: guards.append(
                FakeGuard([])) or guards[-1])
        space = exception.ScratchSpaceExhausted(
            path=self.scratch, used=2 * MiB, used_h='2.0 MiB',
            free_h='1.0 GiB', cap_h='1.0 MiB')

        def upload(image, size):
            guards[0].error = space
            raise IOError('upload of image data failed')

        exc = self.assertRaises(
            exception.ScratchSpaceExhausted, stream.stream, self.driver,
            self.context, self.instance, self.guest, self.plan, self.step,
            upload)

        self.assertIs(space, exc)
        self.assertIsInstance(exc.__cause__, IOError)
        self.assertFalse(guards[0].watching)
        self.assertFalse(self.backup['running'])
        self.assert_files_removed()

    def test_an_export_that_cannot_be_read_still_ends_the_backup(self):
        self.export.side_effect = exception.SnapshotError(
            reason='the NBD export of vda has no allocation map')

        self.assertRaises(exception.SnapshotError, self._stream)

        self.assertEqual(['domain.backupBegin', 'step', 'domain.abortJob'],
                         [c[0] for c in self._changes()])
        self.end.assert_called_once_with(self.driver, self.instance,
                                         self.guest, self.plan)
        self.assert_files_removed()


class ColdStreamTestCase(base.TestCase):

    def test_qemu_nbd_reads_the_pinned_chain_read_only_for_us_alone(self):
        plan = dataclasses.replace(PLAN, live=False, capture_method='stream')
        self.assertTrue(plan.cold_stream)
        self.assertEqual(
            ['qemu-nbd', '--read-only', '--shared=1', plan.chain.filename()],
            coldstream.argv(plan))
        # Every node named, as for qemu-img: nothing probed.
        self.assertTrue(plan.chain.filename().startswith('json:'))
