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

"""blockjob: a copy is done only when it is a ready mirror; a gone job fails.

The domain is a FakeDomain (autospec'd virDomain) behind nova's real Guest,
so what is asserted is what libvirt is asked.  Time is a FakeClock injected
through ``wait_for_mirror``'s ``sleep`` and ``clock``: nothing sleeps.
"""

from unittest import mock

import fixtures
import libvirt

from nova_snapdriver import blockjob
from nova_snapdriver import exception
from nova_snapdriver import progress
from tests.unit import base


def job(cur, end):
    return {'type': libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
            'bandwidth': 0, 'cur': cur, 'end': end}


class WaitForMirrorTestCase(base.TestCase):

    def setUp(self):
        super(WaitForMirrorTestCase, self).setUp()
        self.domain = base.FakeDomain(base.file_disk_xml('/d/disk'))
        self.guest = self.make_guest(self.domain)
        self.instance = self.make_instance()
        self.clock = base.FakeClock()
        self.updates = []
        listener = lambda *args: self.updates.append(args)  # noqa: E731
        progress.listen(listener)
        self.addCleanup(progress.unlisten, listener)

    def _wait(self, jobs, mirrors=(), timeout=60, poll_interval=1,
              log_interval=10):
        """Run wait_for_mirror over scripted polls.

        ``jobs``: what each blockJobInfo poll returns; ``mirrors``: the
        ``ready`` attribute of the disk's <mirror> each time the XML is read
        ('': a <mirror> without it, as libvirt shows a copy in progress;
        None: no <mirror> element at all).
        """
        self.domain.mock.blockJobInfo.side_effect = list(jobs)
        self.domain.mock.XMLDesc.side_effect = [
            self._xml_with_mirror(ready) for ready in mirrors]
        return blockjob.wait_for_mirror(
            self.guest, base.DISK_DEV, self.instance, timeout=timeout,
            poll_interval=poll_interval, log_interval=log_interval,
            sleep=self.clock.sleep, clock=self.clock)

    def _xml_with_mirror(self, ready):
        self.domain.mirror = ready
        try:
            return self.domain.xml()
        finally:
            self.domain.mirror = None

    def test_returns_at_once_when_the_first_poll_is_a_ready_mirror(self):
        self.assertIsNone(self._wait([job(4, 4)], ['yes']))

        self.assertEqual([], self.clock.sleeps)
        self.domain.mock.blockJobInfo.assert_called_once_with(
            base.DISK_DEV, flags=0)
        self.domain.mock.XMLDesc.assert_called_once_with(0)

    def test_cursor_at_end_but_mirror_not_ready_keeps_waiting(self):
        self._wait([job(4, 4)] * 4, ['', None, 'no', 'yes'])

        self.assertEqual([1, 1, 1], self.clock.sleeps)
        self.assertEqual(4, self.domain.mock.blockJobInfo.call_count)
        self.assertEqual(4, self.domain.mock.XMLDesc.call_count)

    def test_ready_mirror_with_cursor_short_of_end_keeps_waiting(self):
        # The XML is only read once the cursor is at the end.
        self._wait([job(1, 4), job(3, 4), job(4, 4)], ['yes'])

        self.assertEqual([1, 1], self.clock.sleeps)
        self.domain.mock.XMLDesc.assert_called_once_with(0)

    def test_every_poll_is_reported_to_listeners_as_copy_progress(self):
        self._wait([job(0, 0), job(1, 4), job(4, 4)], ['no', 'yes'])

        self.assertEqual([(base.INSTANCE_UUID, 'copy', 1, 4),
                          (base.INSTANCE_UUID, 'copy', 4, 4)], self.updates)

    def _test_vanished(self, active, reason):
        self.domain.mock.isActive.side_effect = active

        exc = self.assertRaises(exception.BlockJobFailed, self._wait,
                                [job(1, 4), {}])

        self.assertNotIsInstance(exc, exception.BlockJobTimeout)
        self.assertEqual(reason, exc.kwargs['reason'])
        self.assertEqual(base.DISK_DEV, exc.kwargs['disk'])
        self.assertEqual(base.INSTANCE_UUID, exc.kwargs['instance_uuid'])
        self.assertIn('The block copy of vda for the snapshot of instance '
                      '%s %s.' % (base.INSTANCE_UUID, reason), str(exc))
        self.assertEqual([1], self.clock.sleeps)

    def test_job_gone_while_domain_inactive_fails_as_not_running(self):
        self._test_vanished(
            [0], 'stopped because the instance is no longer running')

    def test_job_gone_and_is_active_raising_fails_as_not_running(self):
        self._test_vanished(
            base.libvirt_error(libvirt.VIR_ERR_NO_DOMAIN),
            'stopped because the instance is no longer running')

    def test_job_gone_while_domain_runs_fails_as_failed_or_cancelled(self):
        self._test_vanished(
            [1], 'ended before the copy was complete: it failed in QEMU or '
                 'was cancelled from outside (see the libvirtd log for the '
                 'cause)')

    def test_job_gone_before_first_poll_never_counts_as_success(self):
        self.domain.mock.isActive.side_effect = [1]

        self.assertRaises(exception.BlockJobFailed, self._wait, [{}])
        self.domain.mock.XMLDesc.assert_not_called()

    def test_not_ready_at_the_deadline_times_out_with_percent(self):
        exc = self.assertRaises(
            exception.BlockJobTimeout, self._wait, [job(1, 4)] * 4,
            timeout=3, poll_interval=1)

        self.assertEqual(3, exc.kwargs['timeout'])
        self.assertEqual(25, exc.kwargs['percent'])
        self.assertIn('was not ready after 3 s (25% copied)', str(exc))
        self.assertIn('[snapdriver] block_job_timeout', str(exc))
        # Polled at 0, 1, 2 and 3 s; gave up at the deadline.
        self.assertEqual([1, 1, 1], self.clock.sleeps)
        self.assertEqual(4, self.domain.mock.blockJobInfo.call_count)

    def test_timeout_before_any_progress_reports_zero_percent(self):
        exc = self.assertRaises(
            exception.BlockJobTimeout, self._wait, [job(0, 0), job(0, 0)],
            ['no', 'no'], timeout=0.5, poll_interval=1)

        self.assertEqual(0, exc.kwargs['percent'])

    def test_timeout_percent_is_that_of_the_last_poll(self):
        exc = self.assertRaises(
            exception.BlockJobTimeout, self._wait,
            [job(1, 10), job(5, 10), job(9, 10), job(10, 10)],
            ['no'], timeout=3, poll_interval=1)

        self.assertEqual(100, exc.kwargs['percent'])

    def test_logs_percent_at_most_once_per_log_interval(self):
        # Progress throttles on its own clock: make it the fake one.
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.progress.time.monotonic',
            side_effect=self.clock))

        self._wait([job(i, 100) for i in range(0, 100, 10)] + [job(100, 100)],
                   ['yes'], poll_interval=2, log_interval=5)

        lines = [line for line in self.logs.output.splitlines()
                 if 'Snapshot copy:' in line]
        # Polls every 2 s from t=0; a line at t=6 (30%), 12, 18 (90%).
        self.assertEqual(['INFO Snapshot copy: 30% (30 B of 100 B)',
                          'INFO Snapshot copy: 60% (60 B of 100 B)',
                          'INFO Snapshot copy: 90% (90 B of 100 B)'], lines)

    def test_ready_mirror_logs_debug_line_with_size(self):
        self._wait([job(2048, 2048)], ['yes'])

        self.assertIn('DEBUG Block copy of vda is a ready mirror (2.0 KiB)',
                      self.logs.output)


class AbortTestCase(base.TestCase):

    def setUp(self):
        super(AbortTestCase, self).setUp()
        self.domain = base.FakeDomain(base.file_disk_xml('/d/disk'))
        self.guest = self.make_guest(self.domain)

    def _abort(self, job_info=None, abort_error=None):
        self.domain.mock.blockJobInfo.side_effect = [job_info]
        if abort_error is not None:
            self.domain.mock.blockJobAbort.side_effect = abort_error
        return blockjob.abort(self.guest, base.DISK_DEV)

    def test_no_job_returns_false_without_aborting(self):
        self.assertFalse(self._abort({}))

        self.domain.mock.blockJobAbort.assert_not_called()

    def test_running_job_is_aborted_synchronously_and_returns_true(self):
        self.assertTrue(self._abort(job(1, 4)))

        self.assertEqual(
            [mock.call.blockJobInfo(base.DISK_DEV, flags=0),
             mock.call.blockJobAbort(base.DISK_DEV, flags=0)],
            self.domain.mock.method_calls)

    def test_domain_gone_while_asking_for_the_job_returns_false(self):
        self.assertFalse(self._abort(
            base.libvirt_error(libvirt.VIR_ERR_NO_DOMAIN)))

        self.domain.mock.blockJobAbort.assert_not_called()

    def _test_abort_error_swallowed(self, code):
        self.assertFalse(self._abort(job(1, 4), base.libvirt_error(code)))
        self.domain.mock.blockJobAbort.assert_called_once_with(
            base.DISK_DEV, flags=0)

    def test_domain_gone_at_abort_returns_false(self):
        self._test_abort_error_swallowed(libvirt.VIR_ERR_NO_DOMAIN)

    def test_job_ended_just_before_abort_returns_false(self):
        self._test_abort_error_swallowed(libvirt.VIR_ERR_OPERATION_INVALID)

    def test_other_libvirt_error_at_abort_is_raised(self):
        error = base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR)

        raised = self.assertRaises(libvirt.libvirtError, self._abort,
                                   job(1, 4), error)

        self.assertIs(error, raised)

    def test_other_libvirt_error_asking_for_the_job_is_raised(self):
        error = base.libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED)

        raised = self.assertRaises(libvirt.libvirtError, self._abort, error)

        self.assertIs(error, raised)
        self.domain.mock.blockJobAbort.assert_not_called()
