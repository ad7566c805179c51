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

"""The capture_method choice, the backup wait and the zstd convert line.

libvirt is mocked at the virDomain/virConnect boundary; the functional
tests (tests/functional/test_capture_methods.py) run each method for real.
"""

import logging

import fixtures

import libvirt

from nova.virt.libvirt import guest as libvirt_guest

from nova_snapdriver import blockjob
from nova_snapdriver import chain
from nova_snapdriver import exception
from nova_snapdriver import plan as snapshot_plan
from nova_snapdriver import qemu_img
from tests.unit import base

NONE = {'type': libvirt.VIR_DOMAIN_JOB_NONE}
BACKUP = libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
DOMAIN_XML = ("<domain type='kvm'><os><type arch='x86_64'>hvm</type></os>"
              "%s</domain>")
# QEMU as libvirt-qemu (64055), as Debian runs it.
QEMU_LABEL = ("<seclabel type='dynamic' model='dac' relabel='yes'>"
              "<label>+64055:+64055</label></seclabel>")


def running(done, total=100):
    return {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED, 'operation': BACKUP,
            'disk_processed': done, 'disk_total': total}


def completed(job_type=libvirt.VIR_DOMAIN_JOB_COMPLETED, **extra):
    return dict({'type': job_type, 'operation': BACKUP,
                 'disk_processed': 100, 'disk_total': 100}, **extra)


class WaitForBackupTestCase(base.TestCase):

    def setUp(self):
        super(WaitForBackupTestCase, self).setUp()
        self.instance = self.make_instance()
        self.clock = base.FakeClock()
        self.domain = base.autospec(libvirt.virDomain)

    def _wait(self, active, final, timeout=60):
        stats = iter(active + [NONE])

        def job_stats(flags=0):
            if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
                return final
            return next(stats)
        self.domain.jobStats.side_effect = job_stats
        return blockjob.wait_for_backup(
            self.domain, 'vda', self.instance, timeout=timeout,
            poll_interval=1, log_interval=10, sleep=self.clock.sleep,
            clock=self.clock)

    def test_completed_backup_returns(self):
        self._wait([running(0), running(50)], completed())
        self.domain.abortJob.assert_not_called()

    def test_cancelled_backup_is_an_error(self):
        e = self.assertRaises(
            exception.BackupFailed, self._wait, [running(10)],
            completed(libvirt.VIR_DOMAIN_JOB_CANCELLED, success=False,
                      errmsg='Operation canceled'))
        self.assertIn('cancelled from outside', str(e))
        self.assertIn('Operation canceled', str(e))

    def test_failed_backup_is_an_error(self):
        e = self.assertRaises(
            exception.BackupFailed, self._wait, [],
            completed(libvirt.VIR_DOMAIN_JOB_FAILED, success=False,
                      errmsg='No space left on device'))
        self.assertIn('failed (No space left on device)', str(e))

    def test_no_record_of_the_backup_is_an_error(self):
        e = self.assertRaises(exception.BackupFailed, self._wait, [],
                              {'type': libvirt.VIR_DOMAIN_JOB_COMPLETED,
                               'operation': 0})
        self.assertIn('no record', str(e))

    def test_timeout_names_the_option(self):
        e = self.assertRaises(exception.BackupTimeout, self._wait,
                              [running(30)] * 10, completed(), timeout=3)
        self.assertIn('block_job_timeout', str(e))
        self.assertIn('30%', str(e))


class AbortBackupTestCase(base.TestCase):

    def test_aborts_a_running_backup_and_waits_for_it_to_end(self):
        domain = base.autospec(libvirt.virDomain)
        domain.jobStats.side_effect = [running(5), running(6), NONE]
        self.assertTrue(blockjob.abort_backup(domain, sleep=lambda s: None))
        domain.abortJob.assert_called_once_with()

    def test_nothing_to_abort(self):
        domain = base.autospec(libvirt.virDomain)
        domain.jobStats.return_value = NONE
        self.assertFalse(blockjob.abort_backup(domain))
        domain.abortJob.assert_not_called()


class CaptureMethodTestCase(base.TestCase):

    def setUp(self):
        super(CaptureMethodTestCase, self).setUp()
        # The real driver, on an autospec'd nova Host whose connection is
        # an autospec'd virConnect.
        self.driver = self.make_driver()
        self.conn = base.autospec(libvirt.virConnect)
        self.driver._host.get_connection.return_value = self.conn
        self.guest = base.autospec(libvirt_guest.Guest)
        self.guest.get_xml_desc.return_value = DOMAIN_XML % QEMU_LABEL
        # nova-compute's user (nova, 120) is in QEMU's group, as the
        # install guide says.
        self._nova_in_groups(64055)

    def _nova_in_groups(self, *groups):
        self.useFixture(fixtures.MockPatch('os.geteuid', return_value=120))
        self.useFixture(fixtures.MockPatch('os.getegid', return_value=130))
        self.useFixture(fixtures.MockPatch('os.getgroups',
                                           return_value=list(groups)))

    def _eventlet(self, patched):
        self.useFixture(fixtures.MockPatchObject(
            snapshot_plan.novacompat, 'eventlet_threads',
            return_value=patched))

    def _caps(self, backup):
        features = ("<backup supported='%s'/>" % backup) if backup else ''
        self.conn.getDomainCapabilities.return_value = (
            '<domainCapabilities><features>%s</features>'
            '</domainCapabilities>' % features)

    def test_explicit_method_is_used_without_probing(self):
        for method in ('rebase', 'copy', 'backup'):
            self.flags(capture_method=method, group='snapdriver')
            self.assertEqual(method, snapshot_plan.capture_method(
                self.driver, self.guest))
        self.conn.getDomainCapabilities.assert_not_called()

    def test_explicit_stream_is_checked_in_the_plan(self):
        # Before anything is touched, not after backupBegin.
        self.flags(capture_method='stream', group='snapdriver')
        self._caps('yes')
        self._libnbd(True)
        self.assertEqual('stream', snapshot_plan.capture_method(
            self.driver, self.guest))
        self.conn.getDomainCapabilities.assert_called_once_with(
            None, 'x86_64', None, 'kvm', 0)

    def _falls_back(self, method, expected, why, **kwargs):
        self.flags(capture_method=method, group='snapdriver')
        self._caps('yes')
        log = self.useFixture(fixtures.FakeLogger(level=logging.WARNING))
        self.assertEqual(expected, snapshot_plan.capture_method(
            self.driver, self.guest, **kwargs))
        self.assertIn(why, log.output)
        self.assertIn('using %s' % expected, log.output)
        return log.output

    def test_nova_outside_qemus_group_backs_up_instead_of_streaming(self):
        # QEMU as libvirt-qemu cannot make its socket where nova cannot
        # share it: found in the plan, for stream and auto alike.
        self._libnbd(True)
        self._nova_in_groups(131)
        for method in ('stream', 'auto'):
            output = self._falls_back(method, 'backup', 'not in group 64055')
            self.assertIn('qemu.conf', output)

    def test_a_domain_without_a_dac_label_is_not_streamed(self):
        self._libnbd(True)
        self.guest.get_xml_desc.return_value = DOMAIN_XML % ''
        self._falls_back('stream', 'backup', 'no DAC security label')

    def test_a_socket_path_too_long_backs_up_instead_of_streaming(self):
        self._libnbd(True)
        self._falls_back('stream', 'backup', 'more than a unix socket takes',
                         work_dir='/srv/' + 'x' * 120)

    def test_explicit_stream_without_libnbd_backs_up(self):
        self._libnbd(False)
        self._falls_back('stream', 'backup', 'python3-libnbd')

    def test_vmdk_and_vdi_are_never_streamed(self):
        self._libnbd(True)
        for fmt in ('vmdk', 'vdi'):
            for method in ('stream', 'auto'):
                self._falls_back(method, 'backup', 'not %s' % fmt,
                                 image_format=fmt)

    def _libnbd(self, available):
        self.useFixture(fixtures.MockPatchObject(
            snapshot_plan, 'libnbd_available', return_value=available))

    def test_auto_picks_stream_when_backup_and_libnbd_are_there(self):
        self.flags(capture_method='auto', group='snapdriver')
        self._caps('yes')
        self._libnbd(True)
        self.assertEqual('stream', snapshot_plan.capture_method(
            self.driver, self.guest))
        self.conn.getDomainCapabilities.assert_called_once_with(
            None, 'x86_64', None, 'kvm', 0)

    def test_auto_is_the_default_and_streams_where_it_can(self):
        self._caps('yes')
        self._libnbd(True)

        self.assertEqual('auto', snapshot_plan.CONF.snapdriver.capture_method)
        self.assertEqual('stream', snapshot_plan.capture_method(
            self.driver, self.guest))

    def test_stream_and_auto_stream_under_eventlet_and_threads(self):
        # nova 31 to 33 run nova-compute under eventlet, 34 on threads:
        # the stream's threads are the OS's in both (novacompat).
        self._caps('yes')
        self._libnbd(True)
        for patched in (True, False):
            self._eventlet(patched)
            for method in ('stream', 'auto'):
                self.flags(capture_method=method, group='snapdriver')
                log = self.useFixture(
                    fixtures.FakeLogger(level=logging.WARNING))
                self.assertEqual('stream', snapshot_plan.capture_method(
                    self.driver, self.guest))
                self.assertEqual('', log.output)

    def test_auto_picks_backup_when_supported_without_libnbd(self):
        self.flags(capture_method='auto', group='snapdriver')
        self._caps('yes')
        self._libnbd(False)
        self.assertEqual('backup', snapshot_plan.capture_method(
            self.driver, self.guest))

    def test_stream_asked_for_a_compressed_image_uses_copy(self):
        self.flags(capture_method='stream', group='snapdriver')
        self._caps('yes')
        self._libnbd(True)
        self.assertEqual('copy', snapshot_plan.capture_method(
            self.driver, self.guest, compress=True))
        self.assertEqual('stream', snapshot_plan.capture_method(
            self.driver, self.guest, compress=False))

    def test_auto_picks_copy_without_backup(self):
        self.flags(capture_method='auto', group='snapdriver')
        for backup in ('no', None):
            self._caps(backup)
            self.assertEqual('copy', snapshot_plan.capture_method(
                self.driver, self.guest))

    def _auto_without_transient_copy(self, backup, compress=False):
        """What auto picks where libvirt has no transient block copy."""
        self.flags(capture_method='auto', group='snapdriver')
        self._caps(backup)
        # The real libvirt module, less the flag.
        self.useFixture(fixtures.MonkeyPatch(
            'libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB',
            fixtures.MonkeyPatch.delete))
        return snapshot_plan.capture_method(self.driver, self.guest,
                                            compress=compress)

    def test_auto_picks_rebase_without_transient_block_copy(self):
        self.assertEqual('rebase', self._auto_without_transient_copy('no'))

    def test_auto_picks_copy_over_backup_for_a_compressed_image(self):
        self.flags(capture_method='auto', group='snapdriver')
        self._caps('yes')
        self._libnbd(False)
        self.assertEqual('copy', snapshot_plan.capture_method(
            self.driver, self.guest, compress=True))
        self.assertEqual('backup', snapshot_plan.capture_method(
            self.driver, self.guest, compress=False))

    def test_auto_compressed_without_transient_copy_still_backs_up(self):
        # Never a stream, even with libnbd: a stream is not compressed.
        self._libnbd(True)
        self.assertEqual('backup', self._auto_without_transient_copy(
            'yes', compress=True))

    def test_explicit_backup_is_kept_for_a_compressed_image(self):
        self.flags(capture_method='backup', group='snapdriver')
        self.assertEqual('backup', snapshot_plan.capture_method(
            self.driver, self.guest, compress=True))

    def test_auto_falls_back_when_capabilities_cannot_be_read(self):
        self.flags(capture_method='auto', group='snapdriver')
        self.conn.getDomainCapabilities.side_effect = libvirt.libvirtError(
            'no caps')
        self.assertEqual('copy', snapshot_plan.capture_method(
            self.driver, self.guest))


class ZstdConvertTestCase(base.TestCase):

    SRC = chain.Node('/a', 'qcow2')

    def test_zstd_adds_only_the_compression_type_option(self):
        self.assertEqual(
            ['qemu-img', 'convert', '-O', 'qcow2', '-c', '-o',
             'compression_type=zstd', '-W', '-m', '16',
             self.SRC.filename(), 'b'],
            qemu_img.convert_cmd(self.SRC, 'b', 'qcow2', compress=True,
                                 compression_type='zstd'))

    def test_zstd_without_compression_changes_nothing(self):
        self.assertEqual(
            qemu_img.convert_cmd(self.SRC, 'b', 'qcow2'),
            qemu_img.convert_cmd(self.SRC, 'b', 'qcow2',
                                 compression_type='zstd'))
