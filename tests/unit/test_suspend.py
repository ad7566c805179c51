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

"""suspend: the guest saved as nova saves it, started again once, always.

And coldstream.LastByte, which starts it as the disk's last byte is read
and refuses to read the disk again after that.  nova's driver (its
``suspend`` and ``_resume_guest_after_snapshot``) and the guest are
autospec'd mocks; the journal step is a list.
"""

import io
from unittest import mock

import fixtures
import libvirt
from nova.compute import power_state
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as libvirt_guest

from nova_snapdriver import coldstream
from nova_snapdriver import exception
from nova_snapdriver import imagestream
from nova_snapdriver import suspend
from tests.unit import base


class SuspendedTestCase(base.TestCase):

    def setUp(self):
        super(SuspendedTestCase, self).setUp()
        self.driver = base.autospec(libvirt_driver.LibvirtDriver)
        self.guest = base.autospec(libvirt_guest.Guest)
        self.guest.is_active.return_value = False
        self.instance = self.make_instance()
        self.steps = []
        # Everything done to the guest, in order, with the journal's
        # 'saved' at that moment.
        self.events = []
        self.driver.suspend.side_effect = lambda *a: self._event('save')
        self.resume = self.driver._resume_guest_after_snapshot
        self.resume.side_effect = lambda *a: self._event('start')

    def _event(self, name):
        saved = [f['saved'] for _n, f in self.steps if 'saved' in f]
        self.events.append((name, saved[-1] if saved else None))

    def _step(self, name, **fields):
        self.steps.append((name, fields))

    def _suspended(self, state=power_state.RUNNING):
        return suspend.suspended(self.driver, self.context, self.instance,
                                 self.guest, state, self._step)

    def test_saved_then_started_as_nova_does_and_journalled_around(self):
        for state in (power_state.RUNNING, power_state.PAUSED):
            self.events.clear()
            with self._suspended(state):
                self._event('read')

            # The journal says 'saved' before the save, and no more once
            # the guest runs again.
            self.assertEqual([('save', True), ('read', True),
                              ('start', True)], self.events)
            self.assertEqual(
                [('suspending', {'saved': True}), ('suspended', {}),
                 ('restored', {'saved': False})], self.steps[-3:])
            self.driver.suspend.assert_called_with(self.context,
                                                   self.instance)
            # nova's own start: False is live_snapshot, then the state
            # before the save (a paused guest comes back paused).
            self.resume.assert_called_with(self.context, False, state,
                                           self.instance, self.guest)
        self.assertIn('Guest paused again: suspended for', self.logs.output)
        self.assertIn('Guest running again: suspended for',
                      self.logs.output)

    def test_started_as_soon_as_asked_and_only_once(self):
        with self._suspended() as saved:
            saved.restore_soon()
            self._event('upload ends')
            self.assertIsNotNone(saved.downtime)

        self.assertEqual([('save', True), ('start', True),
                          ('upload ends', False)], self.events)

    def test_an_error_is_raised_once_the_guest_runs_again(self):
        def fail():
            with self._suspended():
                raise IOError('Glance went away')

        error = self.assertRaises(IOError, fail)

        self.assertEqual('Glance went away', str(error))
        self.resume.assert_called_once()
        self.assertEqual(('restored', {'saved': False}), self.steps[-1])

    def test_a_save_that_failed_starts_nothing(self):
        # nova's managed save failed: the guest still runs.
        self.driver.suspend.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED, 'cannot save')
        self.guest.is_active.return_value = True

        def snapshot():
            with self._suspended():
                self.fail('the body runs only once the guest is saved')

        self.assertRaises(libvirt.libvirtError, snapshot)

        self.resume.assert_not_called()
        self.assertEqual(('restored', {'saved': False}), self.steps[-1])
        self.assertIn('still running', self.logs.output)

    def test_a_failed_start_keeps_saved_and_the_first_error_wins(self):
        self.resume.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED, 'Failed to get "write" lock')

        def snapshot():
            with self._suspended():
                raise IOError('Glance went away')

        self.assertRaises(IOError, snapshot)

        self.assertNotIn(('restored', {'saved': False}), self.steps)
        self.assertIn('Restoring the guest from its managed save failed; '
                      'the journal record is kept', self.logs.output)

    def test_a_failed_start_after_a_good_snapshot_says_so(self):
        self.resume.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED, 'Failed to get "write" lock')

        def snapshot():
            with self._suspended() as saved:
                saved.restore_soon()  # logs, never raises

        error = self.assertRaises(exception.GuestNotRestored, snapshot)

        self.assertIn('Failed to get "write" lock', str(error))
        self.assertIn(self.instance.uuid, str(error))
        self.assertEqual(2, self.resume.call_count)
        self.assertNotIn(('restored', {'saved': False}), self.steps)
        self.assertIn('trying again once the upload is over',
                      self.logs.output)

    def test_a_start_that_works_the_second_time_is_enough(self):
        self.resume.side_effect = [
            base.libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, 'locked'),
            None]

        with self._suspended() as saved:
            saved.restore_soon()

        self.assertEqual(2, self.resume.call_count)
        self.assertEqual(('restored', {'saved': False}), self.steps[-1])


class LastByteTestCase(base.TestCase):
    """The image stream that starts the guest at its last byte."""

    SIZE = 3 * imagestream.MAX_READ // 2

    def setUp(self):
        super(LastByteTestCase, self).setUp()
        disk = bytes(range(256)) * (self.SIZE // 256 + 1)
        layout = imagestream.raw_layout(
            self.SIZE, [imagestream.Extent(0, self.SIZE, True)])
        self.preads = []

        def pread(offset, length):
            self.preads.append(offset)
            return disk[offset:offset + length]
        self.done = mock.Mock()
        self.stream = coldstream.LastByte(
            imagestream.StreamReader(layout, pread), self.SIZE, self.done)
        self.disk = disk[:self.SIZE]

    def _read_all(self):
        data = b''
        while True:
            piece = self.stream.read(64 * 1024)
            if not piece:
                return data
            data += piece
            if len(data) < self.SIZE:
                self.done.assert_not_called()

    def test_done_once_the_last_byte_is_read(self):
        self.assertEqual(self.disk, self._read_all())

        self.done.assert_called_once_with()
        self.assertEqual(b'', self.stream.read())
        self.done.assert_called_once_with()

    def test_measuring_the_size_and_rewinding_before_the_end_is_fine(self):
        # What requests does before sending, and an early retry.
        self.assertEqual(self.SIZE, self.stream.seek(0, io.SEEK_END))
        self.assertEqual(self.SIZE, self.stream.tell())
        self.assertEqual(0, self.stream.seek(0))
        self.stream.read(1000)
        self.assertEqual(0, self.stream.seek(0))

        self.assertEqual(self.disk, self._read_all())
        self.done.assert_called_once_with()

    def test_the_disk_is_never_read_again_once_done(self):
        self._read_all()
        preads = list(self.preads)

        error = self.assertRaises(io.UnsupportedOperation,
                                  self.stream.seek, 0)

        self.assertIn('the disk may have changed since', str(error))
        self.assertEqual(preads, self.preads)
        self.assertEqual(self.SIZE, self.stream.seek(0, io.SEEK_END))
        self.done.assert_called_once_with()


class StreamDiskTestCase(base.TestCase):
    """stream_disk with read_done: qemu-nbd is gone before the start."""

    def test_the_export_is_closed_before_read_done(self):
        events = []
        export = mock.Mock(size=4096)
        export.close.side_effect = lambda: events.append('export closed')
        layout = imagestream.raw_layout(
            4096, [imagestream.Extent(0, 4096, True)])
        reader = imagestream.StreamReader(layout, lambda o, n: b'x' * n)
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.stream.Export', return_value=export))
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.stream.reader', return_value=(reader, 4096)))
        plan = mock.Mock(disk_dev='vda')

        def upload(image, size):
            while image.read(1024):
                pass
            events.append('upload ends')

        coldstream.stream_disk(self.make_instance(), plan,
                               lambda *a, **k: None, upload,
                               read_done=lambda: events.append('started'))

        self.assertEqual(['export closed', 'started', 'upload ends',
                          'export closed'], events)
