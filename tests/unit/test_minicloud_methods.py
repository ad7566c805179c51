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

"""``tools/minicloud/minicloud methods``: nova-compute's log, method by
method."""

import unittest

from minicloud_lib import methods

STARTED = ('2026-12-07 04:00:00.000 1 INFO nova_snapdriver.driver [-] '
           'nova-snapdriver takes the snapshots on this host: '
           'capture_method = %s')
PLANNED = ('2026-12-07 04:01:00.000 1 INFO nova_snapdriver.plan [req-1] '
           '[instance: 7d1c] Planned %s snapshot (capture method %s) of '
           '/var/lib/nova/instances/7d1c/disk (qcow2, 1.0 GiB virtual)')
FALLBACK = ('2026-12-07 04:01:00.000 1 WARNING nova_snapdriver.plan '
            '[instance: 7d1c] capture_method stream cannot run on this '
            'host: ...; using backup for this snapshot')


class CheckTestCase(unittest.TestCase):

    def test_every_live_snapshot_streamed(self):
        counts, problems = methods.check([
            STARTED % 'stream', PLANNED % ('live', 'stream'),
            PLANNED % ('cold', 'none'), PLANNED % ('live', 'stream')])
        self.assertEqual({'stream': 2}, counts)
        self.assertEqual([], problems)

    def test_a_fallback_is_a_problem(self):
        counts, problems = methods.check([
            STARTED % 'stream', FALLBACK, PLANNED % ('live', 'backup')])
        self.assertEqual({'backup': 1}, counts)
        self.assertEqual(1, len(problems))
        self.assertIn('line 3: capture_method stream', problems[0])
        self.assertIn('ran backup', problems[0])

    def test_auto_must_stream(self):
        self.assertEqual([], methods.check([
            STARTED % 'auto', PLANNED % ('live', 'stream')])[1])
        self.assertEqual(1, len(methods.check([
            STARTED % 'auto', PLANNED % ('live', 'copy')])[1]))

    def test_a_restart_with_another_method_is_followed(self):
        # The e2e crash test restarts nova-compute with rebase, then back.
        counts, problems = methods.check([
            STARTED % 'stream', PLANNED % ('live', 'stream'),
            STARTED % 'rebase', PLANNED % ('live', 'rebase'),
            STARTED % 'stream', PLANNED % ('live', 'stream')])
        self.assertEqual({'stream': 2, 'rebase': 1}, counts)
        self.assertEqual([], problems)

    def test_no_live_snapshot_at_all_fails(self):
        self.assertEqual(['no live snapshot was planned'], methods.check([
            STARTED % 'stream', PLANNED % ('cold', 'none')])[1])

    def test_a_snapshot_before_the_start_line_fails(self):
        # A driver that never logged its method cannot be checked.
        problems = methods.check([PLANNED % ('live', 'stream')])[1]
        self.assertIn('before nova-compute said which method', problems[0])


class HashingTestCase(unittest.TestCase):

    def test_counts_uploads_hashed_once_and_both_ways(self):
        line = PLANNED % ('live', 'stream') + (
            ' into a qcow2 image hashed with %s: needs 1.0 GiB in /s, '
            '9.0 GiB free')
        self.assertEqual((2, 1), methods.hashing([
            line % 'sha512', line % 'sha512 and md5', line % 'md5',
            STARTED % 'stream', PLANNED % ('cold', 'none')]))
