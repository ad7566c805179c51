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

"""journal: atomic 0600 records in a 0700 directory, and flock liveness.

Everything is real files in the base test case's tmp ``journal_path``; the
lock tests use a second open file description (flock locks belong to one,
so a second ``open`` in this process conflicts like another process would)
and, once, a real child process.
"""

import fcntl
import json
import os
import stat
import subprocess
import sys
import time
from unittest import mock

import fixtures

from nova_snapdriver import journal
from tests.unit import base

WORK_DIR = '/var/lib/nova/instances/snapshots/' + base.IMAGE_ID


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class JournalTestCase(base.TestCase):

    def setUp(self):
        super(JournalTestCase, self).setUp()
        self.path = os.path.join(self.journal_dir, base.IMAGE_ID + '.json')
        self.lock_path = os.path.join(self.journal_dir,
                                      base.IMAGE_ID + '.lock')

    def _begin(self, image_id=base.IMAGE_ID, **fields):
        record = journal.begin(
            instance_uuid=base.INSTANCE_UUID, instance_name='instance-1',
            image_id=image_id, disk_path='/disk', disk_dev='vda',
            work_dir=WORK_DIR, xml='<domain><secret/></domain>',
            persistent=True, phase='planned', **fields)
        self.addCleanup(record.release)
        return record

    def _read(self, path=None):
        with open(path or self.path) as f:
            return json.load(f)

    def _write(self, text, name=base.IMAGE_ID + '.json'):
        os.makedirs(self.journal_dir, exist_ok=True)
        path = os.path.join(self.journal_dir, name)
        with open(path, 'w') as f:
            f.write(text)
        return path

    def _other_fd_can_lock(self):
        """Whether another open file description gets the lock now."""
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True

    # --- begin ------------------------------------------------------------

    def test_begin_writes_a_0600_record_in_a_new_0700_directory(self):
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.time.time', return_value=1234.5))

        record = self._begin()

        self.assertEqual(self.path, record.path)
        self.assertEqual(0o700, _mode(self.journal_dir))
        self.assertEqual(0o600, _mode(self.path))
        self.assertEqual(0o600, _mode(self.lock_path))
        self.assertEqual(
            {'version': 1, 'instance_uuid': base.INSTANCE_UUID,
             'instance_name': 'instance-1', 'image_id': base.IMAGE_ID,
             'disk_path': '/disk', 'disk_dev': 'vda', 'work_dir': WORK_DIR,
             'xml': '<domain><secret/></domain>', 'persistent': True,
             'phase': 'planned', 'pid': os.getpid(), 'started_at': 1234.5,
             'updated_at': 1234.5}, self._read())
        self.assertEqual(self._read(), record.data)
        self.assertEqual(base.IMAGE_ID, record.image_id)
        self.assertEqual('planned', record.phase)
        self.assertEqual(
            sorted([base.IMAGE_ID + '.json', base.IMAGE_ID + '.lock']),
            sorted(os.listdir(self.journal_dir)))

    def test_begin_is_0600_whatever_the_umask(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)

        self._begin()

        self.assertEqual(0o700, _mode(self.journal_dir))
        self.assertEqual(0o600, _mode(self.path))
        self.assertEqual(0o600, _mode(self.lock_path))

    def test_begin_holds_the_lock_until_remove(self):
        record = self._begin()

        self.assertFalse(self._other_fd_can_lock())
        self.assertIsNone(journal.try_lock(self.path))

        record.remove()

        self.assertFalse(os.path.exists(self.lock_path))

    def test_begin_in_an_existing_directory_keeps_the_others(self):
        other = self._write('{}', 'other.json')

        self._begin()

        self.assertTrue(os.path.exists(other))
        self.assertEqual(self.path, journal.paths()[-1])

    # --- update -----------------------------------------------------------

    def test_update_rewrites_the_whole_record_with_a_new_time(self):
        clock = self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.time.time', return_value=10.0)).mock
        record = self._begin()
        clock.return_value = 20.0

        record.update(phase='uploading', size=4096)

        data = self._read()
        self.assertEqual(('uploading', 4096, 10.0, 20.0),
                         (data['phase'], data['size'], data['started_at'],
                          data['updated_at']))
        self.assertEqual(data, record.data)
        self.assertEqual('uploading', record.phase)
        self.assertEqual(0o600, _mode(self.path))

    def test_update_replaces_the_file_it_never_writes_into_it(self):
        record = self._begin()
        before = os.stat(self.path).st_ino
        with open(self.path) as reader:
            record.update(phase='copying')
            # A reader of the old file still reads the whole old record.
            self.assertEqual('planned', json.load(reader)['phase'])

        self.assertNotEqual(before, os.stat(self.path).st_ino)
        self.assertEqual('copying', self._read()['phase'])

    def test_failing_write_leaves_the_old_record_and_no_temp_file(self):
        record = self._begin()
        old = self._read()
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.fsync',
            side_effect=OSError(28, 'No space left on device')))

        self.assertRaises(OSError, record.update, phase='copying')

        self.assertEqual(old, self._read())
        self.assertEqual(
            sorted([base.IMAGE_ID + '.json', base.IMAGE_ID + '.lock']),
            sorted(os.listdir(self.journal_dir)))

    def test_failing_rename_leaves_the_old_record_and_no_temp_file(self):
        record = self._begin()
        old = self._read()
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.rename',
            side_effect=OSError(5, 'Input/output error')))

        self.assertRaises(OSError, record.update, phase='copying')

        self.assertEqual(old, self._read())
        self.assertFalse([n for n in os.listdir(self.journal_dir)
                          if n.startswith('.tmp-')])

    def test_write_atomically_fsyncs_the_file_then_the_directory(self):
        os.makedirs(self.journal_dir)
        calls = []
        real_fsync, real_rename = os.fsync, os.rename
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.fsync',
            side_effect=lambda fd: calls.append(
                ('fsync', stat.S_ISDIR(os.fstat(fd).st_mode))) or
            real_fsync(fd)))
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.rename',
            side_effect=lambda a, b: calls.append(('rename', b)) or
            real_rename(a, b)))

        journal.write_atomically(self.path, '{"a": 1}')

        self.assertEqual([('fsync', False), ('rename', self.path),
                          ('fsync', True)], calls)
        self.assertEqual({'a': 1}, self._read())

    # --- remove -----------------------------------------------------------

    def test_remove_deletes_the_record_and_its_lock(self):
        other = self._begin(image_id='other')
        record = self._begin()

        record.remove()

        self.assertEqual(sorted(['other.json', 'other.lock']),
                         sorted(os.listdir(self.journal_dir)))
        # The lock went with it: a new fd on a new lock file gets it.
        fd = journal.try_lock(self.path)
        self.assertIsNotNone(fd)
        os.close(fd)
        self.assertIsNone(journal.try_lock(other.path))

    def test_remove_tolerates_files_already_gone_and_a_second_call(self):
        record = self._begin()
        os.unlink(self.path)
        os.unlink(self.lock_path)

        record.remove()
        record.remove()

        self.assertEqual([], os.listdir(self.journal_dir))

    def test_remove_deletes_the_record_before_the_lock(self):
        record = self._begin()
        unlinked = []
        real_unlink = os.unlink

        def unlink(path):
            # Each file goes while the lock is still held.
            unlinked.append((os.path.basename(path),
                             self._other_fd_can_lock()))
            real_unlink(path)
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.unlink', side_effect=unlink))

        record.remove()

        self.assertEqual([(base.IMAGE_ID + '.json', False),
                          (base.IMAGE_ID + '.lock', False)], unlinked)

    def test_release_drops_the_lock_and_keeps_the_record(self):
        record = self._begin()

        record.release()
        record.release()

        self.assertTrue(self._other_fd_can_lock())
        self.assertEqual('planned', journal.load(self.path).phase)

    # --- load -------------------------------------------------------------

    def test_load_returns_an_unlocked_record(self):
        self._begin().release()

        record = journal.load(self.path)

        self.assertEqual(self._read(), record.data)
        self.assertEqual(self.path, record.path)
        self.assertEqual('planned', record.phase)
        self.assertIsNone(record._lock_fd)

    def _assert_corrupt(self, text, message):
        path = self._write(text)

        exc = self.assertRaises(journal.CorruptRecord, journal.load, path)

        self.assertIn(path, str(exc))
        self.assertIn(message, str(exc))

    def test_load_of_truncated_json_is_corrupt(self):
        self._begin().release()
        with open(self.path) as f:
            whole = f.read()

        self._assert_corrupt(whole[:len(whole) // 2], 'unreadable')

    def test_load_of_an_empty_file_is_corrupt(self):
        self._assert_corrupt('', 'unreadable')

    def test_load_of_bytes_that_are_not_text_is_corrupt(self):
        os.makedirs(self.journal_dir)
        with open(self.path, 'wb') as f:
            f.write(b'\xff\xfe\x00garbage')

        exc = self.assertRaises(journal.CorruptRecord, journal.load,
                                self.path)

        self.assertIn('unreadable', str(exc))

    def test_load_of_json_that_is_not_an_object_is_corrupt(self):
        self._assert_corrupt('["a", "list"]', 'not a record')

    def test_load_of_a_record_missing_keys_names_them(self):
        self._assert_corrupt(
            json.dumps({'version': 1, 'image_id': base.IMAGE_ID,
                        'phase': 'copying'}),
            'missing instance_uuid, work_dir')

    def test_load_of_a_missing_file_is_corrupt(self):
        exc = self.assertRaises(journal.CorruptRecord, journal.load,
                                self.path)

        self.assertIn('unreadable', str(exc))

    # --- paths --------------------------------------------------------------

    def test_paths_of_a_missing_directory_is_empty(self):
        self.assertEqual([], journal.paths())
        self.assertFalse(os.path.exists(self.journal_dir))

    def test_paths_lists_records_oldest_first_and_nothing_else(self):
        now = time.time()
        for name, age in (('b.json', 10), ('a.json', 30), ('c.json', 20)):
            path = self._write('{}', name)
            os.utime(path, (now - age, now - age))
        for name in ('a.lock', '.tmp-xyz', 'notes.txt'):
            self._write('', name)

        self.assertEqual(
            [os.path.join(self.journal_dir, n)
             for n in ('a.json', 'c.json', 'b.json')], journal.paths())

    def test_paths_skips_a_record_removed_while_listing(self):
        # The record of a snapshot that finishes between listdir and stat.
        kept = self._write('{}', 'kept.json')
        real_listdir = os.listdir
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.listdir',
            side_effect=lambda p: real_listdir(p) + ['gone.json']))

        self.assertEqual([kept], journal.paths())

    def test_directory_is_the_configured_journal_path(self):
        self.flags(journal_path='/elsewhere', group='snapdriver')

        self.assertEqual('/elsewhere', journal.directory())

    # --- try_lock and discard_lock ----------------------------------------

    def test_try_lock_is_none_while_another_fd_holds_the_lock(self):
        os.makedirs(self.journal_dir)
        holder = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(self._close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)

        self.assertIsNone(journal.try_lock(self.path))

        os.close(holder)
        fd = journal.try_lock(self.path)
        self.addCleanup(self._close, fd)
        self.assertIsInstance(fd, int)
        # Now ours: the former holder would be the one refused.
        self.assertFalse(self._other_fd_can_lock())

    def _close(self, fd):
        try:
            os.close(fd)
        except OSError:
            pass

    def _locked_by_a_child(self):
        """A dead snapshot's record whose lock another process took."""
        self._begin().release()
        child = subprocess.Popen(
            [sys.executable, '-c',
             'import fcntl, os, sys\n'
             'fd = os.open(sys.argv[1], os.O_RDWR)\n'
             'fcntl.flock(fd, fcntl.LOCK_EX)\n'
             'print("locked", flush=True)\n'
             'sys.stdin.read()\n', self.lock_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.assertEqual('locked\n', child.stdout.readline())
        return child

    def test_try_lock_gets_the_lock_of_a_dead_process(self):
        child = self._locked_by_a_child()

        self.assertIsNone(journal.try_lock(self.path))

        child.kill()
        child.wait()
        fd = journal.try_lock(self.path)
        self.assertIsNotNone(fd)
        os.close(fd)

    def test_try_lock_creates_a_missing_lock_file_as_0600(self):
        os.makedirs(self.journal_dir)

        fd = journal.try_lock(self.path)
        os.close(fd)

        self.assertEqual(0o600, _mode(self.lock_path))

    def test_try_lock_closes_its_fd_when_refused(self):
        self._begin()
        with mock.patch.object(journal.os, 'close',
                               wraps=os.close) as close:
            self.assertIsNone(journal.try_lock(self.path))

        close.assert_called_once_with(mock.ANY)

    def test_discard_lock_removes_the_lock_file_if_any(self):
        self._begin().release()

        journal.discard_lock(self.path)
        journal.discard_lock(self.path)

        self.assertEqual([base.IMAGE_ID + '.json'],
                         os.listdir(self.journal_dir))

    # --- temp files, held, the recovery note --------------------------------

    def test_temp_file_is_named_after_the_record(self):
        os.makedirs(self.journal_dir)
        names = []
        real_rename = os.rename
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.rename',
            side_effect=lambda a, b: names.append(os.path.basename(a)) or
            real_rename(a, b)))

        journal.write_atomically(self.path, '{}')

        name, = names
        self.assertTrue(name.startswith('.tmp-%s.json-' % base.IMAGE_ID),
                        name)

    def test_root_rewriting_a_record_keeps_its_owner(self):
        record = self._begin()
        st = os.stat(self.path)
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.geteuid', return_value=0))
        fchown = self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.fchown')).mock

        record.update(recovery={'attempts': 1})

        fchown.assert_called_once_with(mock.ANY, st.st_uid, st.st_gid)

    def test_a_new_file_or_a_user_that_is_not_root_changes_no_owner(self):
        fchown = self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.fchown')).mock
        record = self._begin()  # a new file, as root or not
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.geteuid', return_value=1000))
        record.update(phase='copying')

        fchown.assert_not_called()

    def test_recovery_note_of_a_record(self):
        record = self._begin()
        self.assertEqual({}, record.recovery)

        record.update(recovery={'attempts': 2, 'pending': ['x']})

        self.assertEqual({'attempts': 2, 'pending': ['x']},
                         journal.load(self.path).recovery)
        record.update(recovery='garbage')
        self.assertEqual({}, journal.load(self.path).recovery)

    def test_held_while_the_snapshot_holds_its_lock(self):
        record = self._begin()

        self.assertTrue(journal.held(self.path))

        record.release()
        self.assertFalse(journal.held(self.path))
        # It took no lock that outlives the call.
        fd = journal.try_lock(self.path)
        self.assertIsNotNone(fd)
        os.close(fd)

    def test_held_creates_no_lock_file(self):
        os.makedirs(self.journal_dir)

        self.assertFalse(journal.held(self.path))

        self.assertEqual([], os.listdir(self.journal_dir))

    def test_held_by_another_process(self):
        child = self._locked_by_a_child()

        self.assertTrue(journal.held(self.path))

        child.kill()
        child.wait()
        self.assertFalse(journal.held(self.path))

    def _temp(self, name, age):
        path = self._write('{"half', name)
        then = time.time() - age
        os.utime(path, (then, then))
        return path

    def test_stray_temp_files_are_old_and_of_no_live_record(self):
        self._begin()  # in flight: its temp files are its own
        other = 'decade00-1234-4abc-8def-0123456789ab.json'
        stray = self._temp('.tmp-%s-abc_12' % other, 601)
        self._temp('.tmp-%s-young1' % other, 30)
        self._temp('.tmp-%s.json-abc123' % base.IMAGE_ID, 3600)
        legacy = self._temp('.tmp-k2j3h4l5', 3600)
        self._temp('.tmp-young2', 10)
        self._temp('notes.txt', 3600)

        self.assertEqual(sorted([stray, legacy]),
                         journal.stray_temp_files())

    def test_stray_temp_files_grace_and_clock(self):
        path = self._temp('.tmp-x.json-abc', 0)
        mtime = os.stat(path).st_mtime

        self.assertEqual([], journal.stray_temp_files(now=mtime + 59,
                                                      grace=60))
        self.assertEqual([path], journal.stray_temp_files(now=mtime + 60,
                                                          grace=60))

    def test_stray_temp_files_of_a_missing_journal(self):
        self.assertEqual([], journal.stray_temp_files())

    def test_interrupted_write_leaves_a_temp_file_that_is_stray_later(self):
        record = self._begin()
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.unlink'))  # as if killed there
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.journal.os.rename',
            side_effect=OSError(5, 'Input/output error')))
        self.assertRaises(OSError, record.update, phase='copying')
        tmp, = [n for n in os.listdir(self.journal_dir)
                if n.startswith('.tmp-')]
        later = time.time() + journal.TEMP_GRACE_SECONDS + 1

        self.assertEqual([], journal.stray_temp_files(now=later))
        record.release()
        self.assertEqual([os.path.join(self.journal_dir, tmp)],
                         journal.stray_temp_files(now=later))
