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

"""progress: sizes, phase timings, throttled percent lines and listeners.

``time.monotonic`` as progress sees it is a FakeClock; nothing sleeps.
"""

from unittest import mock

import fixtures

from nova_snapdriver import progress
from tests.unit import base


class HumanSizeTestCase(base.TestCase):

    def _assert_sizes(self, cases):
        self.assertEqual(cases, {n: progress.human_size(n) for n in cases})

    def test_bytes_below_one_kib_are_whole_bytes(self):
        self._assert_sizes({0: '0 B', 1: '1 B', 1023: '1023 B'})

    def test_larger_sizes_use_one_decimal_binary_units(self):
        self._assert_sizes({1024: '1.0 KiB', 1536: '1.5 KiB',
                            1024 ** 2: '1.0 MiB', 5 * 1024 ** 3: '5.0 GiB'})

    def test_gib_is_the_largest_unit(self):
        self._assert_sizes({2 * 1024 ** 4: '2048.0 GiB'})

    def test_negative_sizes_scale_by_magnitude(self):
        self._assert_sizes({-2048: '-2.0 KiB', -5: '-5 B'})


class ListenerMixin(object):

    def listen(self, callback=None):
        self.updates = []
        callback = callback or (lambda *a: self.updates.append(a))
        progress.listen(callback)
        self.addCleanup(self._unlisten, callback)
        return callback

    def _unlisten(self, callback):
        if callback in progress._listeners:
            progress.unlisten(callback)


class ProgressTestCase(ListenerMixin, base.TestCase):

    def setUp(self):
        super(ProgressTestCase, self).setUp()
        self.clock = base.FakeClock()
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.progress.time.monotonic',
            side_effect=self.clock))
        self.instance = self.make_instance()

    def _log_lines(self):
        return [line for line in self.logs.output.splitlines()
                if line.startswith('INFO Snapshot upload:')]

    def _run(self, steps, total=1000, interval=10):
        """Update at (seconds since start, done) ``steps``."""
        meter = progress.Progress(self.instance, 'upload', total, interval)
        start = self.clock.now
        for at, done in steps:
            self.clock.now = start + at
            meter.update(done)
        return meter

    def test_logs_at_most_once_per_interval(self):
        self._run([(0, 0), (5, 100), (10, 250), (15, 500), (19.9, 600),
                   (20, 750), (40, 1000)])

        self.assertEqual(
            ['INFO Snapshot upload: 25% (250 B of 1000 B)',
             'INFO Snapshot upload: 75% (750 B of 1000 B)',
             'INFO Snapshot upload: 100% (1000 B of 1000 B)'],
            self._log_lines())

    def test_interval_restarts_at_the_last_line_not_on_a_grid(self):
        self._run([(12, 100), (21, 200), (22, 300)])

        # 12 s: logged; 21 s: only 9 s later; 22 s: 10 s later.
        self.assertEqual(
            ['INFO Snapshot upload: 10% (100 B of 1000 B)',
             'INFO Snapshot upload: 30% (300 B of 1000 B)'],
            self._log_lines())

    def test_listeners_see_every_update_unthrottled(self):
        self.listen()

        self._run([(0, 0), (1, 10), (2, 20)])

        self.assertEqual([(base.INSTANCE_UUID, 'upload', 0, 1000),
                          (base.INSTANCE_UUID, 'upload', 10, 1000),
                          (base.INSTANCE_UUID, 'upload', 20, 1000)],
                         self.updates)
        self.assertEqual([], self._log_lines())

    def test_update_with_a_total_replaces_the_total(self):
        self.listen()
        meter = self._run([])

        self.clock.now += 10
        meter.update(50, 200)
        self.clock.now += 10
        meter.update(100)

        self.assertEqual(200, meter.total)
        self.assertEqual([(base.INSTANCE_UUID, 'upload', 50, 200),
                          (base.INSTANCE_UUID, 'upload', 100, 200)],
                         self.updates)
        self.assertEqual(['INFO Snapshot upload: 25% (50 B of 200 B)',
                          'INFO Snapshot upload: 50% (100 B of 200 B)'],
                         self._log_lines())

    def test_unknown_total_logs_zero_percent(self):
        self._run([(10, 4096)], total=0)

        self.assertEqual(['INFO Snapshot upload: 0% (4.0 KiB of 0 B)'],
                         self._log_lines())

    def test_failing_listener_is_logged_and_the_others_still_called(self):
        failing = mock.Mock(side_effect=RuntimeError('listener broke'))
        progress.listen(failing)
        self.addCleanup(progress.unlisten, failing)
        self.listen()

        self._run([(10, 500)])

        failing.assert_called_once_with(base.INSTANCE_UUID, 'upload', 500,
                                        1000)
        self.assertEqual([(base.INSTANCE_UUID, 'upload', 500, 1000)],
                         self.updates)
        self.assertIn('Progress listener failed; ignoring it',
                      self.logs.output)
        self.assertIn('RuntimeError: listener broke', self.logs.output)
        self.assertEqual(['INFO Snapshot upload: 50% (500 B of 1000 B)'],
                         self._log_lines())

    def test_unlistened_callback_is_not_called_any_more(self):
        callback = self.listen()
        self._run([(0, 1)])
        progress.unlisten(callback)

        self._run([(0, 2)])

        self.assertEqual([(base.INSTANCE_UUID, 'upload', 1, 1000)],
                         self.updates)


class PhaseClockTestCase(ListenerMixin, base.TestCase):

    def setUp(self):
        super(PhaseClockTestCase, self).setUp()
        self.clock = base.FakeClock()
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.progress.time.monotonic',
            side_effect=self.clock))
        self.instance = self.make_instance()
        self.phases = progress.PhaseClock(self.instance)

    def _phase(self, name, secs, error=None):
        with self.phases.phase(name):
            self.clock.now += secs
            if error is not None:
                raise error

    def test_each_phase_records_its_duration_in_order(self):
        self._phase('plan', 0.25)
        self.clock.now += 100  # between phases: not any phase's time
        self._phase('capture', 2)

        self.assertEqual([('plan', 0.25), ('capture', 2)],
                         list(self.phases.durations.items()))
        self.assertIn('INFO Snapshot phase plan took 0.25s', self.logs.output)
        self.assertIn('INFO Snapshot phase capture took 2.00s',
                      self.logs.output)
        self.assertIn('DEBUG Snapshot phase capture starting',
                      self.logs.output)

    def test_failing_phase_is_timed_and_its_error_propagates(self):
        error = RuntimeError('boom')

        raised = self.assertRaises(RuntimeError, self._phase, 'extract', 3,
                                   error)

        self.assertIs(error, raised)
        self.assertEqual({'extract': 3}, self.phases.durations)
        self.assertIn('INFO Snapshot phase extract failed after 3.00s',
                      self.logs.output)
        self.assertNotIn('extract took', self.logs.output)

    def test_failing_phase_is_sent_to_listeners_as_failed(self):
        self.listen()

        self.assertRaises(RuntimeError, self._phase, 'capture', 2,
                          RuntimeError('boom'))
        self._phase('upload', 1)

        self.assertEqual(
            [(base.INSTANCE_UUID, 'capture:failed', 2, None),
             (base.INSTANCE_UUID, 'upload:done', 1, None)], self.updates)

    def test_phase_end_is_sent_to_listeners_with_its_duration(self):
        self.listen()

        self._phase('upload', 1.5)

        self.assertEqual([(base.INSTANCE_UUID, 'upload:done', 1.5, None)],
                         self.updates)

    def test_failing_listener_does_not_break_a_phase(self):
        self.listen(mock.Mock(side_effect=ValueError('no')))

        self._phase('plan', 1)

        self.assertEqual({'plan': 1}, self.phases.durations)

    def test_summary_gives_total_then_each_phase(self):
        self._phase('plan', 0.1)
        self._phase('capture', 2.04)
        self.clock.now += 1

        self.assertEqual('3.1s (plan 0.1s, capture 2.0s)',
                         self.phases.summary())


class NotifyStepTestCase(ListenerMixin, base.TestCase):

    def test_step_is_sent_to_listeners_as_step_name(self):
        self.listen()
        instance = self.make_instance()

        progress.notify_step(instance, 'copying')
        progress.notify_step(instance, 'uploading')

        self.assertEqual(
            [(base.INSTANCE_UUID, 'step:copying', 0, None),
             (base.INSTANCE_UUID, 'step:uploading', 0, None)], self.updates)

    def test_failing_listener_does_not_break_a_step(self):
        self.listen(mock.Mock(side_effect=RuntimeError('bar broke')))
        after = mock.Mock()
        self.listen(after)

        progress.notify_step(self.make_instance(), 'overlay')

        after.assert_called_once_with(base.INSTANCE_UUID, 'step:overlay', 0,
                                      None)
        self.assertIn('Progress listener failed; ignoring it',
                      self.logs.output)
