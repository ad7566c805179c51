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

"""capture: the live copy, and the domain left as it was whatever fails.

The driver is the real SnapLibvirtDriver (its undefine, quiesce and thaw are
nova's code); libvirt is a FakeDomain behind nova's Guest plus an autospec'd
Host, and qemu-img is a fake ``processutils.execute``.  The order of what
reaches those boundaries is recorded on one parent mock.
"""

import os
import stat
from unittest import mock

import libvirt
from oslo_concurrency import processutils

from nova import exception as nova_exception

from nova_snapdriver import blockjob
from nova_snapdriver import capture
from nova_snapdriver import chain
from nova_snapdriver import exception
from nova_snapdriver import plan as snapshot_plan
from tests.unit import base

DISK = '/var/lib/nova/instances/%s/disk' % base.INSTANCE_UUID
BACKING = '/var/lib/nova/instances/_base/0123abcd'
CHAIN = chain.Node(DISK, 'qcow2', chain.Node(BACKING, 'raw'))

UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                  libvirt.VIR_DOMAIN_UNDEFINE_KEEP_TPM |
                  libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
COPY_FLAGS = (libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY |
              libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT |
              libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW)
SAVE_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE

# Domain calls that only read: left out of the recorded sequence.
READS = {'XMLDesc', 'blockJobInfo', 'isActive', 'isPersistent', 'info',
         'ID', 'UUIDString', 'name', 'jobStats', 'connect', 'isAlive',
         'get_connection'}


class LiveCaptureTestCase(base.TestCase):

    def setUp(self):
        super(LiveCaptureTestCase, self).setUp()
        self.flags(block_job_bandwidth=50, group='snapdriver')
        self.work_dir = os.path.join(self.snapshots_dir, base.IMAGE_ID)
        os.makedirs(self.work_dir)
        self.overlay = os.path.join(self.work_dir, 'overlay.qcow2')
        self.xml_path = os.path.join(self.snapshots_dir,
                                     base.INSTANCE_UUID + '.xml')
        self.domain = base.FakeDomain(base.file_disk_xml(DISK))
        self.saved_xml = self.domain.xml(SAVE_FLAGS)
        self.guest = self.make_guest(self.domain)
        self.conn = base.FakeConnection(self.domain)
        self.driver = self.make_driver()
        self.connect_host(self.driver, self.conn)
        self.instance = self.make_instance(hw_qemu_guest_agent='yes')
        self.qemu_img, self.execute = self.patch_execute()
        self.clock = self.fake_capture_clock()
        # The journal callback, recorded in the same sequence as the
        # boundaries so that each step is seen right after its change.
        self.step = mock.Mock()
        self.calls = mock.Mock()
        self.calls.attach_mock(self.domain.mock, 'domain')
        self.calls.attach_mock(self.driver._host, 'host')
        self.calls.attach_mock(self.execute, 'execute')
        self.calls.attach_mock(self.step, 'step')

    def _plan(self, **kw):
        fields = dict(
            image_id=base.IMAGE_ID, image_name='snap', live=True,
            power_state=1, disk_dev=base.DISK_DEV, disk_path=DISK,
            disk_format='qcow2', chain=CHAIN, virtual_size=base.DISK_SIZE,
            image_format='qcow2',
            compress=False, quiesce=False, require_quiesce=False,
            work_dir=self.work_dir, space_needed=1)
        fields.update(kw)
        return snapshot_plan.SnapshotPlan(**fields)

    def _live(self, **plan_fields):
        return capture.live(self.driver, self.context, self.instance,
                            self.guest, self._plan(**plan_fields),
                            self.saved_xml, self.step)

    @property
    def captured(self):
        """What a live capture returns: the overlay over the disk's base."""
        return chain.Node(self.overlay, 'qcow2', CHAIN.backing)

    def _boundary_calls(self):
        """What was asked of qemu-img and libvirt, reads left out."""
        return [c for c in self.calls.mock_calls
                if c[0].split('.')[-1] not in READS]

    def _expected(self, steps):
        calls = {
            'overlay': mock.call.execute(
                'qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b',
                BACKING, '-u', self.overlay, str(base.DISK_SIZE),
                prlimit=None, env_variables=base.QEMU_IMG_ENV),
            'step:overlay': mock.call.step('overlay'),
            'undefine': mock.call.domain.undefineFlags(UNDEFINE_FLAGS),
            'copy': mock.call.domain.blockRebase(
                base.DISK_DEV, self.overlay, 50, COPY_FLAGS),
            'freeze': mock.call.domain.fsFreeze(),
            'abort': mock.call.domain.blockJobAbort(base.DISK_DEV, flags=0),
            'thaw': mock.call.domain.fsThaw(),
            'get_guest': mock.call.host.get_guest(self.instance),
            'step:undefined': mock.call.step('undefined'),
            'step:copying': mock.call.step('copying'),
            # Defined, then checked on the domain looked up again.
            'redefine': [
                mock.call.host.write_instance_config(self.saved_xml),
                mock.call.host.get_guest(self.instance)],
            # A define that raised: nothing to check.
            'write': mock.call.host.write_instance_config(self.saved_xml),
        }
        expected = []
        for s in steps:
            call = calls[s]
            expected += call if isinstance(call, list) else [call]
        return expected

    def _assert_steps(self, *steps):
        self.assertEqual(self._expected(steps), self._boundary_calls())

    def _fail(self, method, error):
        getattr(self.domain.mock, method).side_effect = error
        return error

    # --- success --------------------------------------------------------

    def test_success_runs_the_classic_sequence_and_redefines(self):
        result = self._live()

        self.assertEqual(self.captured, result)
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'redefine')
        self.assertEqual(0o701, stat.S_IMODE(os.stat(self.work_dir).st_mode))
        self.assertFalse(os.path.exists(self.xml_path))
        # One poll found the mirror ready; once aborted, nothing asks again.
        self.domain.mock.blockJobInfo.assert_called_once_with(
            base.DISK_DEV, flags=0)

    def test_success_waits_with_the_configured_timeout_and_intervals(self):
        self.flags(block_job_timeout=77, block_job_poll_interval=0.25,
                   progress_log_interval=3, group='snapdriver')
        with mock.patch.object(blockjob, 'wait_for_mirror',
                               autospec=True) as wait:
            self._live()

        wait.assert_called_once_with(
            self.guest, base.DISK_DEV, self.instance, timeout=77,
            poll_interval=0.25, log_interval=3)

    def test_disk_without_backing_file_gets_an_unbacked_overlay(self):
        unbacked = chain.Node(DISK, 'qcow2')

        self.assertEqual(chain.Node(self.overlay, 'qcow2'),
                         self._live(chain=unbacked))

        self.assertEqual(
            ['qemu-img', 'create', '-f', 'qcow2', self.overlay,
             str(base.DISK_SIZE)], self.qemu_img.commands[0])

    def test_overlay_rewritten_during_the_copy_is_refused_after_restore(self):
        # QEMU held the overlay read-write: a guest that escaped into it
        # points the overlay's header at a host file before the abort.
        abort = self.domain.mock.blockJobAbort.side_effect

        def rewrite_then_abort(disk, flags=0):
            os.unlink(self.overlay)
            base.make_image(self.overlay, backing='/etc/shadow',
                            backing_fmt='raw')
            return abort(disk, flags)
        self.domain.mock.blockJobAbort.side_effect = rewrite_then_abort

        exc = self.assertRaises(exception.UnsafeDiskChain, self._live)

        self.assertIn("its header names the backing file '/etc/shadow', "
                      "not '%s'" % BACKING, str(exc))
        # The domain was put back before the overlay was looked at, and
        # nothing read it.
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'redefine')

    def test_quiesced_success_freezes_only_around_the_abort(self):
        self._live(quiesce=True)

        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'get_guest', 'freeze', 'abort', 'get_guest',
                           'thaw', 'redefine')

    def test_transient_domain_is_neither_undefined_nor_redefined(self):
        self.domain.persistent = False

        self.assertEqual(self.captured, self._live())

        self._assert_steps('overlay', 'step:overlay', 'copy',
                           'step:copying', 'abort')

    def test_freeze_failing_without_require_quiesce_copies_unquiesced(self):
        self._fail('fsFreeze', base.libvirt_error(
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE))

        self.assertEqual(self.captured, self._live(quiesce=True))

        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'get_guest', 'freeze', 'abort', 'redefine')
        self.assertIn('Skipping quiescing instance', self.logs.output)

    def test_thaw_failing_is_logged_and_the_snapshot_succeeds(self):
        self._fail('fsThaw', base.libvirt_error(
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE))

        self.assertEqual(self.captured, self._live(quiesce=True))

        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'get_guest', 'freeze', 'abort', 'get_guest',
                           'thaw', 'redefine')
        self.assertIn('virsh domfsthaw instance-00000001', self.logs.output)

    def test_saved_xml_is_the_inactive_definition_with_secrets(self):
        self.domain.mock.reset_mock()

        self.assertEqual(self.saved_xml, capture.saved_xml(self.guest))

        self.domain.mock.XMLDesc.assert_called_once_with(flags=SAVE_FLAGS)

    # --- the journal callback ---------------------------------------------

    def test_journal_failing_after_the_undefine_still_redefines(self):
        # A full journal disk right after the undefine: the domain must not
        # stay transient because its record could not be written.
        error = OSError(28, 'No space left on device')
        self.step.side_effect = (
            lambda name: self._raise(error) if name == 'undefined' else None)

        raised = self.assertRaises(OSError, self._live)

        self.assertIs(error, raised)
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'redefine')
        self.assertIsNone(self.domain.job)

    def test_journal_failing_after_the_copy_starts_aborts_and_redefines(self):
        error = OSError(28, 'No space left on device')
        self.step.side_effect = (
            lambda name: self._raise(error) if name == 'copying' else None)

        raised = self.assertRaises(OSError, self._live)

        self.assertIs(error, raised)
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'redefine')
        self.assertIsNone(self.domain.job)

    def test_journal_failing_after_the_overlay_leaves_the_domain_alone(self):
        self.step.side_effect = OSError(28, 'No space left on device')

        self.assertRaises(OSError, self._live)

        self._assert_steps('overlay', 'step:overlay')

    @staticmethod
    def _raise(error):
        raise error

    # --- failures before anything is undone ------------------------------

    def test_overlay_creation_failing_leaves_the_domain_untouched(self):
        self.qemu_img.fail['create'] = processutils.ProcessExecutionError(
            exit_code=1, stderr='disk full')

        exc = self.assertRaises(exception.QemuImgFailed, self._live)

        self.assertIn('disk full', str(exc))
        self._assert_steps('overlay')

    def test_undefine_failing_raises_and_copies_nothing(self):
        # nova's delete_configuration retries with a plain undefine().
        error = self._fail('undefineFlags', base.libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, 'first'))
        second = self._fail('undefine', base.libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, 'second'))

        raised = self.assertRaises(libvirt.libvirtError, self._live)

        self.assertIsNot(error, raised)
        self.assertIs(second, raised)
        self.assertEqual(
            self._expected(['overlay', 'step:overlay', 'undefine']) +
            [mock.call.domain.undefine()], self._boundary_calls())

    # --- failures after the undefine --------------------------------------

    def test_block_rebase_failing_redefines_and_raises_its_error(self):
        error = self._fail('blockRebase', base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED))

        raised = self.assertRaises(libvirt.libvirtError, self._live)

        self.assertIs(error, raised)
        # The copy never started: no 'copying' step is journaled.
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'redefine')

    def test_job_vanishing_aborts_nothing_redefines_and_raises(self):
        self.domain.mock.blockJobInfo.side_effect = lambda *a, **k: {}

        exc = self.assertRaises(exception.BlockJobFailed, self._live,
                                quiesce=True)

        self.assertIn('failed in QEMU or was cancelled', str(exc))
        # The job was gone: blockjob.abort asked, found none, aborted none.
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'redefine')

    def test_wait_timing_out_aborts_the_job_and_redefines(self):
        timeout = exception.BlockJobTimeout(
            disk=base.DISK_DEV, instance_uuid=base.INSTANCE_UUID,
            timeout=1800, percent=42)
        with mock.patch.object(blockjob, 'wait_for_mirror', autospec=True,
                               side_effect=timeout):
            raised = self.assertRaises(exception.BlockJobTimeout,
                                       self._live, quiesce=True)

        self.assertIs(timeout, raised)
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'redefine')
        self.assertIsNone(self.domain.job)

    def test_libvirt_error_while_waiting_aborts_and_redefines(self):
        error = base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR)
        errors = [error]
        real_info = self.domain.mock.blockJobInfo.side_effect

        def job_info(disk, flags=0):
            # The first poll fails; the job itself is still there after.
            if errors:
                raise errors.pop()
            return real_info(disk, flags)
        self.domain.mock.blockJobInfo.side_effect = job_info

        raised = self.assertRaises(libvirt.libvirtError, self._live)

        self.assertIs(error, raised)
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'redefine')

    def _test_freeze_failing_required(self, *aborts, abort_error=None):
        freeze_error = self._fail('fsFreeze', base.libvirt_error(
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE))
        if abort_error is not None:
            self._fail('blockJobAbort', abort_error)

        exc = self.assertRaises(nova_exception.InstanceQuiesceFailed,
                                self._live, quiesce=True,
                                require_quiesce=True)

        self.assertIn(str(freeze_error), str(exc))
        # Never frozen, so never thawed; the running job is aborted.
        self._assert_steps(*(('overlay', 'step:overlay', 'undefine',
                              'step:undefined', 'copy', 'step:copying',
                              'get_guest', 'freeze') + aborts +
                             ('redefine',)))

    def test_freeze_failing_with_require_quiesce_aborts_and_raises(self):
        self._test_freeze_failing_required('abort')
        self.assertIsNone(self.domain.job)

    def test_abort_failing_after_an_earlier_error_keeps_the_earlier(self):
        # The abort fails, and fails again on the domain looked up again.
        self._test_freeze_failing_required(
            'abort', 'get_guest', 'abort',
            abort_error=base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                                           'abort broke'))

        self.assertIn('Aborting the block copy of vda failed',
                      self.logs.output)
        self.assertIsNotNone(self.domain.job)

    def test_abort_failing_thaws_retries_the_abort_and_redefines(self):
        error = self._fail('blockJobAbort', base.libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, 'abort broke'))

        raised = self.assertRaises(libvirt.libvirtError, self._live,
                                   quiesce=True)

        self.assertIs(error, raised)
        # The abort failed while frozen: abort again (via blockjob.abort),
        # then once more on the domain looked up again (the connection
        # is alive, so the error is libvirt's own and raised as it is),
        # thaw, then redefine.
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'get_guest', 'freeze', 'abort', 'abort',
                           'get_guest', 'abort', 'get_guest', 'thaw',
                           'redefine')
        self.assertIsNotNone(self.domain.job)
        self.assertTrue(self.domain.persistent)

    def test_abort_failing_then_job_gone_thaws_and_redefines(self):
        def abort_fails_but_ends_job(disk, flags=0):
            self.domain.job = None
            raise error
        error = base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR)
        self.domain.mock.blockJobAbort.side_effect = abort_fails_but_ends_job

        raised = self.assertRaises(libvirt.libvirtError, self._live,
                                   quiesce=True)

        self.assertIs(error, raised)
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'get_guest', 'freeze', 'abort', 'get_guest',
                           'thaw', 'redefine')

    # --- libvirtd lost during the wait ------------------------------------

    def _restart_libvirtd_on_first_poll(self, away_for=0):
        """libvirtd restarts at the first poll of the job.

        The capture's handle is dead from then on (its calls raise); the
        domain and its job live on, reached through a new handle, recorded
        as ``fresh``, once libvirtd answers again, ``away_for`` seconds of
        the fake clock later.  Returns the error the poll raised.
        """
        closed = base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                                    'internal error: client socket is '
                                    'closed')

        def job_info(disk, flags=0):
            self.domain.restart_libvirtd()
            self.calls.attach_mock(self.domain.mock, 'fresh')
            back_at = self.clock.now + away_for
            get_connection = self.driver._host.get_connection.side_effect

            def connection():
                if self.clock.now < back_at:
                    raise base.hypervisor_unavailable()
                return get_connection()
            self.driver._host.get_connection.side_effect = connection
            raise closed
        self.domain.mock.blockJobInfo.side_effect = job_info
        return closed

    def _fresh_abort(self):
        return mock.call.fresh.blockJobAbort(base.DISK_DEV, flags=0)

    def test_lost_connection_aborts_and_redefines_on_a_fresh_lookup(self):
        closed = self._restart_libvirtd_on_first_poll()

        exc = self.assertRaises(exception.LibvirtConnectionLost, self._live)

        self.assertIs(closed, exc.__cause__)
        self.assertIn('lost during the block copy', str(exc))
        self.assertIn('ended the job there; the instance is as it was. '
                      'Retry the snapshot.', str(exc))
        # The dead handle was asked once more (blockjob.abort), then the
        # domain looked up again: aborted, defined and checked there.
        self.assertEqual(
            self._expected(['overlay', 'step:overlay', 'undefine',
                            'step:undefined', 'copy', 'step:copying',
                            'get_guest']) +
            [self._fresh_abort()] + self._expected(['redefine']),
            self._boundary_calls())
        self.assertEqual([self.saved_xml], self.conn.defined)
        self.domain.mock.isPersistent.assert_called_once_with()
        self.assertIsNone(self.domain.job)
        self.assertTrue(self.domain.persistent)
        self.assertFalse(os.path.exists(self.xml_path))
        self.assertEqual([], self.clock.sleeps)

    def test_libvirtd_back_within_the_timeout_is_waited_for(self):
        self.flags(libvirt_reconnect_timeout=10, group='snapdriver')
        self._restart_libvirtd_on_first_poll(away_for=3)

        exc = self.assertRaises(exception.LibvirtConnectionLost, self._live)

        self.assertIn('Retry the snapshot.', str(exc))
        self.assertEqual([1, 1, 1], self.clock.sleeps)
        self.assertEqual(3, self.logs.output.count(
            'libvirtd does not answer (Connection to the hypervisor is '
            'broken on host); trying again'))
        self.assertIn(self._fresh_abort(), self.calls.mock_calls)
        self.assertIsNone(self.domain.job)
        self.assertTrue(self.domain.persistent)

    def test_libvirtd_away_too_long_raises_the_failed_redefine(self):
        self.flags(libvirt_reconnect_timeout=5, group='snapdriver')
        closed = self._restart_libvirtd_on_first_poll(away_for=3600)

        exc = self.assertRaises(exception.DomainRedefineFailed, self._live)

        # Transient is what matters; the lost connection is its cause.
        self.assertIs(closed, exc.__cause__)
        self.assertIn('HypervisorUnavailable', str(exc))
        self.assertEqual(self.xml_path, exc.kwargs['xml_path'])
        with open(self.xml_path) as f:
            self.assertEqual(self.saved_xml, f.read())
        self.assertNotIn(self._fresh_abort(), self.calls.mock_calls)
        self.assertIsNotNone(self.domain.job)
        self.assertFalse(self.domain.persistent)
        # 5 s for the abort's lookup, then 5 s of redefine attempts.
        self.assertEqual(10, len(self.clock.sleeps))
        self.assertIn('ERROR Aborting the block copy of vda failed',
                      self.logs.output)

    def test_copy_lost_connection_aborts_on_a_fresh_lookup(self):
        closed = self._restart_libvirtd_on_first_poll()

        exc = self.assertRaises(exception.LibvirtConnectionLost, self._live,
                                capture_method='copy')

        self.assertIs(closed, exc.__cause__)
        self.assertIn('Retry the snapshot.', str(exc))
        self.assertIn(self._fresh_abort(), self.calls.mock_calls)
        self.assertIsNone(self.domain.job)
        # copy never undefined the domain: nothing to redefine.
        self.driver._host.write_instance_config.assert_not_called()
        self.assertTrue(self.domain.persistent)

    def test_copy_job_that_cannot_be_ended_says_what_is_kept(self):
        self.flags(libvirt_reconnect_timeout=2, group='snapdriver')
        closed = self._restart_libvirtd_on_first_poll(away_for=3600)

        exc = self.assertRaises(exception.LibvirtConnectionLost, self._live,
                                capture_method='copy')

        self.assertIs(closed, exc.__cause__)
        self.assertIn('could not end the job on a new connection either',
                      str(exc))
        self.assertIn('did not answer for 2 s', str(exc))
        self.assertIn("journal record and temp files are kept", str(exc))
        self.assertIn('"nova-snapdriver-manage recover"', str(exc))
        self.assertNotIn('Retry the snapshot.', str(exc))
        self.assertIsNotNone(self.domain.job)
        self.assertEqual([1, 1], self.clock.sleeps)

    def test_libvirt_error_on_a_live_connection_is_raised_as_it_is(self):
        # Only a dead connection is reported as lost.
        error = self._fail('blockCopy', base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED))

        raised = self.assertRaises(libvirt.libvirtError, self._live,
                                   capture_method='copy')

        self.assertIs(error, raised)
        self.domain.mock.blockJobAbort.assert_not_called()
        self.driver._host.get_guest.assert_not_called()

    # --- the redefine itself ----------------------------------------------

    def _fail_redefine(self, times, error=None):
        """The first ``times`` defines raise ``error``; later ones define."""
        error = error or libvirt.libvirtError('define refused')
        define = self.driver._host.write_instance_config.side_effect
        errors = [error] * times

        def write_instance_config(xml):
            if errors:
                raise errors.pop()
            return define(xml)
        self.driver._host.write_instance_config.side_effect = (
            write_instance_config)
        return error

    def test_redefine_failing_on_a_clean_run_raises_and_saves_xml(self):
        self._fail_redefine(3)

        exc = self.assertRaises(exception.DomainRedefineFailed, self._live)

        self.assertEqual(base.INSTANCE_UUID, exc.kwargs['instance_uuid'])
        self.assertEqual(self.xml_path, exc.kwargs['xml_path'])
        self.assertIn('define refused', str(exc))
        self.assertIn("virsh define %s' now" % self.xml_path, str(exc))
        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'write', 'write', 'write')
        self.assertEqual([1, 1], self.clock.sleeps)
        self.assertFalse(self.domain.persistent)
        with open(self.xml_path) as f:
            self.assertEqual(self.saved_xml, f.read())
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.xml_path).st_mode))

    def test_redefine_failing_twice_then_succeeding_is_a_success(self):
        self._fail_redefine(2)

        self.assertEqual(self.captured, self._live())

        self._assert_steps('overlay', 'step:overlay', 'undefine',
                           'step:undefined', 'copy', 'step:copying',
                           'abort', 'write', 'write', 'redefine')
        self.assertTrue(self.domain.persistent)
        self.assertFalse(os.path.exists(self.xml_path))
        self.assertIn('Redefining the domain failed (attempt 2): '
                      'libvirtError: define refused', self.logs.output)

    def test_redefine_failing_after_an_earlier_error_is_what_is_raised(self):
        # The domain is transient: that is what the operator must see,
        # not the earlier error, which is chained.
        error = self._fail('blockRebase', base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED))
        self._fail_redefine(3)

        raised = self.assertRaises(exception.DomainRedefineFailed,
                                   self._live)

        self.assertIs(error, raised.__cause__)
        self.assertIn("virsh define %s' now" % self.xml_path, str(raised))
        self.assertIn('ERROR The persistent definition', self.logs.output)
        with open(self.xml_path) as f:
            self.assertEqual(self.saved_xml, f.read())

    def test_redefine_failing_after_a_timeout_chains_the_timeout(self):
        timeout = exception.BlockJobTimeout(
            disk=base.DISK_DEV, instance_uuid=base.INSTANCE_UUID,
            timeout=1800, percent=42)
        self._fail_redefine(3)
        with mock.patch.object(blockjob, 'wait_for_mirror', autospec=True,
                               side_effect=timeout):
            raised = self.assertRaises(exception.DomainRedefineFailed,
                                       self._live)

        self.assertIs(timeout, raised.__cause__)
        self.assertEqual(self.xml_path, raised.kwargs['xml_path'])
        # The job was aborted all the same.
        self.assertIsNone(self.domain.job)
        self.assertFalse(self.domain.persistent)

    def test_redefine_failure_overwrites_a_stale_xml_file_as_0600(self):
        # The XML holds secrets (dump_sensitive): a file left by someone
        # else must not keep its looser mode.
        with open(self.xml_path, 'w') as f:
            f.write('stale and much longer than the XML' * 1000)
        os.chmod(self.xml_path, 0o644)
        self._fail_redefine(3)

        self.assertRaises(exception.DomainRedefineFailed, self._live)

        with open(self.xml_path) as f:
            self.assertEqual(self.saved_xml, f.read())
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.xml_path).st_mode))

    def test_redefine_failure_still_raised_when_the_xml_cannot_be_saved(self):
        # A full disk after a big snapshot must not turn the error that
        # matters (the domain is transient) into an OSError.
        os.mkdir(self.xml_path)  # opening it for writing fails
        self._fail_redefine(3)

        err = self.assertRaises(exception.DomainRedefineFailed, self._live)

        self.assertIn('nowhere', str(err))
        self.assertIn(self.xml_path, str(err))


class LookupAndRedefineTestCase(base.TestCase):
    """lookup_guest and redefine: through nova's Host, on a FakeClock."""

    def setUp(self):
        super(LookupAndRedefineTestCase, self).setUp()
        self.flags(libvirt_reconnect_timeout=5, group='snapdriver')
        self.domain = base.FakeDomain(base.file_disk_xml(DISK),
                                      persistent=False)
        self.xml = self.domain.xml(SAVE_FLAGS)
        self.conn = base.FakeConnection(self.domain)
        self.driver = self.make_driver()
        self.connect_host(self.driver, self.conn)
        self.host = self.driver._host
        self.instance = self.make_instance()
        self.clock = base.FakeClock()
        self.xml_path = os.path.join(self.snapshots_dir, 'saved.xml')
        os.makedirs(self.snapshots_dir)

    def _lookup(self):
        return capture.lookup_guest(self.driver, self.instance,
                                    sleep=self.clock.sleep, clock=self.clock)

    def _redefine(self):
        return capture.redefine(self.driver, self.xml, self.instance,
                                self.xml_path, sleep=self.clock.sleep,
                                clock=self.clock)

    def _fail_first(self, method, *errors):
        """``method`` of the Host raises ``errors`` first, then works."""
        real = getattr(self.host, method).side_effect
        errors = list(errors)

        def side_effect(*args):
            if errors:
                raise errors.pop(0)
            return real(*args)
        getattr(self.host, method).side_effect = side_effect

    # --- lookup_guest -----------------------------------------------------

    def test_lookup_returns_the_domain_on_the_current_connection(self):
        guest = self._lookup()

        self.assertIs(self.domain.mock, guest._domain)
        self.host.get_guest.assert_called_once_with(self.instance)
        self.assertEqual([], self.clock.sleeps)

    def test_lookup_of_a_gone_domain_is_none_at_once(self):
        del self.conn.domains[base.INSTANCE_UUID]

        self.assertIsNone(self._lookup())

        self.assertEqual([], self.clock.sleeps)

    def test_lookup_retries_while_libvirtd_does_not_answer(self):
        self._fail_first('get_guest', base.hypervisor_unavailable(),
                         nova_exception.InternalError('reconnecting'),
                         base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR))

        guest = self._lookup()

        self.assertIs(self.domain.mock, guest._domain)
        self.assertEqual(4, self.host.get_guest.call_count)
        self.assertEqual([1, 1, 1], self.clock.sleeps)

    def test_lookup_gives_up_after_the_reconnect_timeout(self):
        self.host.get_connection.side_effect = base.hypervisor_unavailable()

        exc = self.assertRaises(exception.LibvirtUnreachable, self._lookup)

        self.assertEqual(5, len(self.clock.sleeps))
        self.assertEqual(105.0, self.clock.now)
        self.assertEqual(6, self.host.get_guest.call_count)
        self.assertIsInstance(exc.__cause__,
                              nova_exception.HypervisorUnavailable)
        self.assertIn('libvirtd did not answer for 5 s', str(exc))
        self.assertIn(base.INSTANCE_UUID, str(exc))

    def test_lookup_raises_other_errors_at_once(self):
        self.host.get_guest.side_effect = RuntimeError('bug')

        self.assertRaises(RuntimeError, self._lookup)

        self.assertEqual([], self.clock.sleeps)

    # --- redefine ---------------------------------------------------------

    def test_redefine_defines_and_checks_on_a_fresh_lookup(self):
        self.assertIsNone(self._redefine())

        self.assertEqual([self.xml], self.conn.defined)
        self.assertEqual([mock.call.write_instance_config(self.xml),
                          mock.call.get_guest(self.instance)],
                         [c for c in self.host.mock_calls
                          if c[0] != 'get_connection'])
        self.assertTrue(self.domain.persistent)
        self.assertFalse(os.path.exists(self.xml_path))

    def _assert_redefine_failed(self, error):
        exc = self.assertRaises(exception.DomainRedefineFailed,
                                self._redefine)
        self.assertEqual(self.xml_path, exc.kwargs['xml_path'])
        self.assertIn("'virsh define %s' now" % self.xml_path, str(exc))
        self.assertIn(error, str(exc))
        with open(self.xml_path) as f:
            self.assertEqual(self.xml, f.read())
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.xml_path).st_mode))
        return exc

    def test_ordinary_error_gets_three_quick_attempts(self):
        self.host.write_instance_config.side_effect = (
            base.libvirt_error(libvirt.VIR_ERR_XML_ERROR, 'bad XML'))

        self._assert_redefine_failed('libvirtError: bad XML')

        self.assertEqual(3, self.host.write_instance_config.call_count)
        self.assertEqual([1, 1], self.clock.sleeps)

    def test_define_accepted_but_still_transient_is_a_failure(self):
        self.conn.mock.defineXML.side_effect = None

        self._assert_redefine_failed('libvirt accepted the definition, yet '
                                     'the domain is still transient')

        self.assertEqual(3, self.host.get_guest.call_count)
        self.assertEqual([1, 1], self.clock.sleeps)

    def test_unreachable_libvirtd_is_retried_until_the_deadline(self):
        self.host.get_connection.side_effect = base.hypervisor_unavailable()

        self._assert_redefine_failed('HypervisorUnavailable')

        # One attempt a second from 0 s to the 5 s deadline.
        self.assertEqual(6, self.host.write_instance_config.call_count)
        self.assertEqual([1] * 5, self.clock.sleeps)
        self.assertFalse(self.domain.persistent)

    def test_libvirtd_back_before_the_deadline_is_a_success(self):
        self._fail_first('write_instance_config',
                         *[base.hypervisor_unavailable()] * 4)

        self.assertIsNone(self._redefine())

        self.assertEqual(5, self.host.write_instance_config.call_count)
        self.assertEqual([1] * 4, self.clock.sleeps)
        self.assertTrue(self.domain.persistent)
        self.assertFalse(os.path.exists(self.xml_path))

    def test_ordinary_error_after_unreachable_stops_at_three(self):
        self._fail_first('write_instance_config',
                         base.hypervisor_unavailable(),
                         *[libvirt.libvirtError('define refused')] * 9)

        self._assert_redefine_failed('libvirtError: define refused')

        self.assertEqual(3, self.host.write_instance_config.call_count)


class ColdCaptureTestCase(base.TestCase):

    def test_cold_capture_is_the_disk_s_checked_chain(self):
        plan = mock.Mock(chain=CHAIN)

        self.assertIs(CHAIN, capture.cold(plan))


class BackupCaptureTestCase(base.TestCase):
    """capture_method backup: a target nova made, reused by libvirt."""

    def setUp(self):
        super(BackupCaptureTestCase, self).setUp()
        self.work_dir = os.path.join(self.snapshots_dir, base.IMAGE_ID)
        os.makedirs(self.work_dir)
        self.domain = base.FakeDomain(base.file_disk_xml(DISK))
        self.domain.mock.jobStats.side_effect = self._job_stats
        self.guest = self.make_guest(self.domain)
        self.conn = base.FakeConnection(self.domain)
        self.driver = self.make_driver()
        self.connect_host(self.driver, self.conn)
        self.clock = self.fake_capture_clock()
        self.qemu_img, self.execute = self.patch_execute()
        self.calls = mock.Mock()
        self.calls.attach_mock(self.domain.mock, 'domain')
        self.calls.attach_mock(self.execute, 'execute')

    @staticmethod
    def _job_stats(flags=0):
        if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            return {'type': libvirt.VIR_DOMAIN_JOB_COMPLETED,
                    'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
        return {'type': libvirt.VIR_DOMAIN_JOB_NONE}

    def _live(self, **kw):
        fields = dict(
            image_id=base.IMAGE_ID, image_name='snap', live=True,
            power_state=1, disk_dev=base.DISK_DEV, disk_path=DISK,
            disk_format='qcow2', chain=CHAIN, virtual_size=base.DISK_SIZE,
            image_format='qcow2', compress=False, quiesce=False,
            require_quiesce=False, work_dir=self.work_dir, space_needed=1,
            capture_method='backup')
        fields.update(kw)
        self.plan = snapshot_plan.SnapshotPlan(**fields)
        return capture.live(self.driver, self.context,
                            self.make_instance(), self.guest, self.plan,
                            None, mock.Mock())

    def _changes(self):
        return [c for c in self.calls.mock_calls
                if c[0].split('.')[-1] in ('execute', 'backupBegin')]

    def _test_target(self, target, fmt, **plan_fields):
        result = self._live(**plan_fields)

        self.assertEqual(chain.Node(target, fmt), result)
        # Created unbacked as this user first, then reused by libvirt.
        create, begin = self._changes()
        self.assertEqual(
            mock.call.execute('qemu-img', 'create', '-f', fmt, target,
                              str(base.DISK_SIZE), prlimit=None,
                              env_variables=base.QEMU_IMG_ENV),
            create)
        xml, checkpoint, flags = begin.args
        self.assertEqual(
            "<domainbackup mode=\"push\"><disks><disk name=\"vda\" "
            "backup=\"yes\" type=\"file\"><target file=\"%s\" />"
            "<driver type=\"%s\" /></disk></disks></domainbackup>"
            % (target, fmt), xml)
        self.assertIsNone(checkpoint)
        self.assertEqual(libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL,
                         flags)
        self.assertEqual(0o701, stat.S_IMODE(os.stat(self.work_dir).st_mode))

    def test_uncompressed_backup_is_the_image_itself(self):
        self._test_target(os.path.join(self.work_dir, 'image'), 'qcow2')

    def test_raw_output_backs_up_into_a_raw_image(self):
        self._test_target(os.path.join(self.work_dir, 'image'), 'raw',
                          image_format='raw')

    def test_compressed_output_backs_up_into_a_flat_qcow2(self):
        self._test_target(os.path.join(self.work_dir, 'backup.qcow2'),
                          'qcow2', compress=True)

    def test_target_failing_to_be_created_never_begins_a_backup(self):
        self.qemu_img.fail['create'] = processutils.ProcessExecutionError(
            exit_code=1, stderr='Permission denied')

        self.assertRaises(exception.QemuImgFailed, self._live)

        self.domain.mock.backupBegin.assert_not_called()

    def test_backup_whose_header_names_a_backing_file_is_refused(self):
        def begin(xml, checkpoint, flags):
            target = os.path.join(self.work_dir, 'image')
            os.unlink(target)
            base.make_image(target, backing='/etc/shadow', backing_fmt='raw')
        self.domain.mock.backupBegin.side_effect = begin

        exc = self.assertRaises(exception.UnsafeDiskChain, self._live)

        self.assertIn("its header names the backing file '/etc/shadow', not "
                      "None", str(exc))

    # --- libvirtd lost during the backup ----------------------------------

    def _backup_job(self, handle, state):
        """``handle`` sees a backup while state['running']; abortJob ends it"""
        def job_stats(flags=0):
            if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
                return {'type': libvirt.VIR_DOMAIN_JOB_CANCELLED,
                        'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
            if state['running']:
                return {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                        'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
            return {'type': libvirt.VIR_DOMAIN_JOB_NONE}
        handle.jobStats.side_effect = job_stats
        handle.abortJob.side_effect = lambda: state.update(running=False)

    def _restart_libvirtd_during_the_backup(self, away_for=0):
        state = {'running': False}
        self._backup_job(self.domain.mock, state)
        closed = base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                                    'internal error: client socket is '
                                    'closed')

        def begin(xml, checkpoint, flags):
            state['running'] = True
            # The first poll of the backup finds libvirtd gone.
            self.domain.restart_libvirtd()
            self._backup_job(self.domain.mock, state)
            back_at = self.clock.now + away_for
            connection = self.driver._host.get_connection.side_effect
            self.driver._host.get_connection.side_effect = lambda: (
                connection() if self.clock.now >= back_at
                else self._raise(base.hypervisor_unavailable()))
        self.domain.mock.backupBegin.side_effect = begin
        return state, closed

    @staticmethod
    def _raise(error):
        raise error

    def test_lost_connection_aborts_the_backup_on_a_fresh_lookup(self):
        old = self.domain.mock
        state, _closed = self._restart_libvirtd_during_the_backup()

        exc = self.assertRaises(exception.LibvirtConnectionLost, self._live)

        self.assertIsInstance(exc.__cause__, libvirt.libvirtError)
        self.assertIn('client socket is closed', str(exc.__cause__))
        self.assertIn('lost during the backup', str(exc))
        self.assertIn('Retry the snapshot.', str(exc))
        self.assertIsNot(old, self.domain.mock)
        self.domain.mock.abortJob.assert_called_once_with()
        self.assertFalse(state['running'])
        self.assertIn('Aborted the backup of vda', self.logs.output)

    def test_backup_that_cannot_be_aborted_says_what_is_kept(self):
        self.flags(libvirt_reconnect_timeout=3, group='snapdriver')
        state, _closed = self._restart_libvirtd_during_the_backup(
            away_for=3600)

        exc = self.assertRaises(exception.LibvirtConnectionLost, self._live)

        self.assertIn('could not end the job on a new connection either',
                      str(exc))
        self.assertIn('"nova-snapdriver-manage recover"', str(exc))
        self.domain.mock.abortJob.assert_not_called()
        self.assertTrue(state['running'])
        self.assertEqual([1, 1, 1], self.clock.sleeps)


class SavedXmlTestCase(base.TestCase):

    def test_a_link_planted_at_the_path_is_not_followed(self):
        # The XML holds the domain's secrets: never written through a link.
        target = os.path.join(self.tmp, 'elsewhere')
        link = os.path.join(self.tmp, 'instance.xml')
        os.symlink(target, link)

        self.assertRaises(OSError, capture._save_xml, '<domain/>', link)

        self.assertFalse(os.path.exists(target))

    def test_the_saved_xml_is_0600(self):
        path = os.path.join(self.tmp, 'instance.xml')
        with open(path, 'w') as f:
            f.write('old')
        os.chmod(path, 0o644)

        capture._save_xml('<domain/>', path)

        self.assertEqual(0o600, os.stat(path).st_mode & 0o777)
        with open(path) as f:
            self.assertEqual('<domain/>', f.read())
