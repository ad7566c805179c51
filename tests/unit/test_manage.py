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

"""nova-snapdriver-manage: arguments, the three commands, exit statuses.

Boundaries only: nova's config parsing (``nova.config.parse_args``),
``libvirt.open`` (a FakeConnection) and Glance (an autospec'd image API).
The journal, recovery, oslo.rootwrap's config parsing and the check's
qemu-img command lines (the real qemu-img, as this user) run for real on
tmp files.
"""

import io
import json
import os
from unittest import mock

import fixtures
import libvirt
from oslo_concurrency import processutils

from nova import exception as nova_exception
from nova.image import glance

from nova_snapdriver.cmd import manage
from nova_snapdriver import journal
from nova_snapdriver import novacompat
from tests.unit import base

INSTANCES = '/var/lib/nova/instances'
DISK = '%s/%s/disk' % (INSTANCES, base.INSTANCE_UUID)
OTHER_IMAGE = 'decade00-1234-4abc-8def-0123456789ab'
CAPS = "<domainCapabilities><features><backup supported='yes'/>" \
       "</features></domainCapabilities>"


class ParseArgsTestCase(base.TestCase):

    def setUp(self):
        super(ParseArgsTestCase, self).setUp()
        self.stderr = self.useFixture(fixtures.MonkeyPatch(
            'sys.stderr', io.StringIO())).new_value

    def test_defaults(self):
        args = manage.parse_args(['status'])

        self.assertEqual(('status', [], False),
                         (args.command, args.config_file, args.json))

    def test_every_option(self):
        args = manage.parse_args(['--config-file', 'a.conf', '--config-file',
                                  'b.conf', '--json', 'recover',
                                  '--dry-run'])

        self.assertEqual(('recover', ['a.conf', 'b.conf'], True, True),
                         (args.command, args.config_file, args.json,
                          args.dry_run))

    def test_recover_is_not_a_dry_run_by_default(self):
        self.assertFalse(manage.parse_args(['recover']).dry_run)

    def test_check(self):
        self.assertEqual('check', manage.parse_args(['check']).command)

    def test_a_command_is_required(self):
        exc = self.assertRaises(SystemExit, manage.parse_args, [])

        self.assertEqual(2, exc.code)
        self.assertIn('required: command', self.stderr.getvalue())

    def test_unknown_command_or_misplaced_option_is_refused(self):
        for argv in (['repair'], ['status', '--dry-run']):
            exc = self.assertRaises(SystemExit, manage.parse_args, argv)
            self.assertEqual(2, exc.code)


class ManageTestCase(base.TestCase):

    def setUp(self):
        super(ManageTestCase, self).setUp()
        self.nova_parse = self.useFixture(fixtures.MockPatchObject(
            manage.nova_config, 'parse_args', autospec=True)).mock
        self.domain = base.FakeDomain(base.file_disk_xml(DISK),
                                      persistent=False)
        self.saved_xml = self.domain.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)
        self.conn = base.FakeConnection(self.domain)
        self.conn.mock.getLibVersion.return_value = 9000000
        self.conn.mock.getVersion.return_value = 8002000
        self.conn.mock.getDomainCapabilities.return_value = CAPS
        self.open = self.useFixture(fixtures.MockPatchObject(
            manage.libvirt, 'open', autospec=True,
            return_value=self.conn.mock)).mock
        self.image_api = base.autospec(glance.API)
        self.image_api.get.return_value = {'id': base.IMAGE_ID,
                                           'status': 'queued'}
        self.useFixture(fixtures.MockPatchObject(
            manage.nova_glance, 'API', autospec=True,
            return_value=self.image_api))
        self.stdout = self.useFixture(fixtures.MonkeyPatch(
            'sys.stdout', io.StringIO())).new_value
        self.work_dir = os.path.join(self.snapshots_dir, base.IMAGE_ID)
        self.path = os.path.join(self.journal_dir, base.IMAGE_ID + '.json')

    def _main(self, *argv):
        code = manage.main(list(argv))
        return code, self.stdout.getvalue()

    def _main_json(self, *argv):
        code, out = self._main('--json', *argv)
        return code, json.loads(out)

    def _record(self, image_id=base.IMAGE_ID, alive=False, **fields):
        fields.setdefault('xml', self.saved_xml)
        fields.setdefault('disk_path', DISK)
        record = base.begin_journal_record(self.snapshots_dir, image_id,
                                           **fields)
        if alive:
            self.addCleanup(record.release)
        else:
            record.release()
        return record

    def _at(self, now):
        """time.time() as manage sees it."""
        clock = mock.Mock(wraps=manage.time)
        clock.time.return_value = now
        self.useFixture(fixtures.MockPatchObject(manage, 'time', clock))

    # --- main ---------------------------------------------------------------

    def test_main_reads_nova_config_and_closes_the_connection(self):
        self.flags(connection_uri='qemu+tcp://host/system', group='libvirt')

        self._main('--config-file', '/etc/nova/nova.conf', '--config-file',
                   '/etc/nova/nova-compute.conf', 'status')

        self.nova_parse.assert_called_once_with(
            ['nova-snapdriver-manage', '--config-file', '/etc/nova/nova.conf',
             '--config-file', '/etc/nova/nova-compute.conf'],
            configure_db=False, init_rpc=False)
        self.open.assert_called_once_with('qemu+tcp://host/system')
        self.conn.mock.close.assert_called_once_with()

    def test_main_defaults_to_the_system_connection(self):
        self.flags(connection_uri='', group='libvirt')

        self._main('status')

        self.nova_parse.assert_called_once_with(
            ['nova-snapdriver-manage'], configure_db=False, init_rpc=False)
        self.open.assert_called_once_with('qemu:///system')

    def test_main_closes_the_connection_when_a_command_fails(self):
        self.useFixture(fixtures.MockPatchObject(
            manage.recovery, 'recover', autospec=True,
            side_effect=RuntimeError('boom')))

        self.assertRaises(RuntimeError, self._main, 'recover')

        self.conn.mock.close.assert_called_once_with()

    # --- status -------------------------------------------------------------

    def test_status_of_an_empty_journal(self):
        self.assertEqual((0, 'No snapshot in flight.\n'),
                         self._main('status'))

    def test_status_json_of_an_empty_journal_is_an_empty_list(self):
        self.assertEqual((0, []), self._main_json('status'))

    def test_status_of_a_copy_in_flight_shows_its_progress(self):
        record = self._record(alive=True)
        self.domain.job = {'type': libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
                           'bandwidth': 0, 'cur': 3, 'end': 4}
        self._at(record.data['started_at'] + 42.7)

        code, out = self._main('status')

        self.assertEqual(0, code)
        self.assertEqual(
            'RUNNING image %s of instance %s: phase copying, 75%% copied, '
            'started 42s ago by pid %d, in flight\n'
            % (base.IMAGE_ID, base.INSTANCE_UUID, os.getpid()), out)
        self.domain.mock.blockJobInfo.assert_called_once_with(
            base.DISK_DEV, 0)
        # Looking did not take the snapshot's lock.
        self.assertIsNone(journal.try_lock(self.path))

    def test_status_json_of_a_snapshot_in_flight(self):
        record = self._record(alive=True, phase='uploading', size=1536)
        self._at(record.data['started_at'] + 5)

        code, rows = self._main_json('status')

        self.assertEqual(0, code)
        self.assertEqual(
            [{'record': self.path, 'instance_uuid': base.INSTANCE_UUID,
              'image_id': base.IMAGE_ID, 'phase': 'uploading',
              'pid': os.getpid(), 'age_seconds': 5, 'state': 'in flight',
              'size': 1536}], rows)
        self.conn.mock.lookupByUUIDString.assert_not_called()

    def test_status_of_an_interrupted_snapshot_fails(self):
        record = self._record(phase='uploading', size=1536)
        self._at(record.data['started_at'] + 600)

        code, out = self._main('status')

        self.assertEqual(1, code)
        self.assertEqual(
            'STOPPED image %s of instance %s: phase uploading, 1.5 KiB '
            'image, started 600s ago by pid %d, interrupted (run recover)\n'
            % (base.IMAGE_ID, base.INSTANCE_UUID, os.getpid()), out)
        # Status repairs nothing.
        self.assertTrue(os.path.exists(self.path))
        self.conn.mock.defineXML.assert_not_called()

    def test_status_lets_go_of_the_lock_it_tested(self):
        self._record()

        self.assertEqual(['interrupted (run recover)'],
                         [r['state'] for r in manage.status(self.conn.mock)])

        fd = journal.try_lock(self.path)
        self.assertIsNotNone(fd, 'status kept the lock of the record')
        os.close(fd)

    def test_status_of_a_copy_whose_domain_is_gone_has_no_progress(self):
        self._record()
        del self.conn.domains[base.INSTANCE_UUID]

        code, rows = self._main_json('status')

        self.assertEqual(1, code)
        self.assertIsNone(rows[0]['progress_percent'])

    def test_status_of_a_copy_with_no_job_has_no_progress(self):
        self._record(alive=True)

        code, out = self._main('status')

        self.assertEqual(0, code)
        self.assertNotIn('copied', out)

    def test_status_of_a_corrupt_record_fails(self):
        os.makedirs(self.journal_dir)
        with open(self.path, 'w') as f:
            f.write('{"version": 1, "image_')

        code, out = self._main('status')

        self.assertEqual(1, code)
        self.assertTrue(out.startswith('CORRUPT %s: %s: unreadable: '
                                       % (self.path, self.path)), out)

    def test_status_of_a_record_recovery_kept_says_what_is_left(self):
        record = self._record(phase='copying')
        record.update(recovery={
            'attempts': 3, 'pending': [
                'redefine the domain instance-00000001 from its saved XML',
                'delete image %s (left queued)' % base.IMAGE_ID],
            'last_error': None})
        self._at(record.data['started_at'] + 600)

        code, out = self._main('status')

        self.assertEqual(1, code)
        self.assertEqual(
            'STOPPED image %s of instance %s: phase copying, started 600s '
            'ago by pid %d, interrupted (run recover)\n'
            '  recovery attempts: 3\n'
            '  still to do: redefine the domain instance-00000001 from its '
            'saved XML\n'
            '  still to do: delete image %s (left queued)\n'
            % (base.IMAGE_ID, base.INSTANCE_UUID, os.getpid(),
               base.IMAGE_ID), out)

    def test_status_json_of_a_record_whose_recovery_failed(self):
        record = self._record(phase='uploading')
        record.update(recovery={'attempts': 1, 'pending': [],
                                'last_error': 'connection reset'})

        code, rows = self._main_json('status')

        self.assertEqual(
            (1, 'interrupted (run recover)', 1, [], 'connection reset'),
            (code, rows[0]['state'], rows[0]['recovery_attempts'],
             rows[0]['pending'], rows[0]['last_error']))

    def test_status_after_a_real_recover_shows_its_attempt(self):
        self._record()
        self.image_api.get.side_effect = nova_exception.GlanceConnectionFailed(
            server='glance:9292', reason='refused')
        manage.recover(self.conn.mock, dry_run=False)

        row, = manage.status(self.conn.mock)

        self.assertEqual((1, ['delete image %s if it is left queued'
                              % base.IMAGE_ID]),
                         (row['recovery_attempts'], row['pending']))

    def test_status_creates_no_lock_file(self):
        self._record()
        os.unlink(self.path[:-len('.json')] + '.lock')

        manage.status(self.conn.mock)

        self.assertEqual([base.IMAGE_ID + '.json'],
                         os.listdir(self.journal_dir))

    def test_status_lists_every_record_oldest_first(self):
        old = self._record(image_id=OTHER_IMAGE)
        os.utime(old.path, (1, 1))
        self._record(alive=True, phase='extracting')

        code, rows = self._main_json('status')

        self.assertEqual(1, code)
        self.assertEqual(
            [(OTHER_IMAGE, 'interrupted (run recover)'),
             (base.IMAGE_ID, 'in flight')],
            [(r['image_id'], r['state']) for r in rows])

    # --- recover ------------------------------------------------------------

    def test_recover_with_nothing_to_do(self):
        self.assertEqual((0, 'Nothing to recover.\n'), self._main('recover'))

    def test_recover_repairs_and_says_what_it_did(self):
        self._record(work_dir=self.work_dir)
        os.makedirs(self.work_dir)

        code, out = self._main('recover')

        self.assertEqual(0, code)
        self.assertEqual(
            '%s: recovered\n'
            '  done: redefined the domain instance-00000001 from its saved '
            'XML\n'
            '  done: deleted %s\n'
            '  done: deleted image %s left queued\n'
            % (base.IMAGE_ID, self.work_dir, base.IMAGE_ID), out)
        self.assertEqual([self.saved_xml], self.conn.defined)
        self.image_api.delete.assert_called_once_with(mock.ANY,
                                                      base.IMAGE_ID)
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(os.path.exists(self.work_dir))

    def test_recover_dry_run_says_what_it_would_do(self):
        self._record()

        code, out = self._main('recover', '--dry-run')

        self.assertEqual(0, code)
        self.assertEqual(
            '%s: dry run\n'
            '  would do: redefined the domain instance-00000001 from its '
            'saved XML\n'
            '  would do: deleted image %s left queued\n'
            % (base.IMAGE_ID, base.IMAGE_ID), out)
        self.conn.mock.defineXML.assert_not_called()
        self.image_api.delete.assert_not_called()
        self.assertTrue(os.path.exists(self.path))

    def test_recover_with_a_problem_fails(self):
        self._record()
        self.image_api.delete.side_effect = nova_exception.Forbidden('no')

        code, out = self._main('recover')

        self.assertEqual(1, code)
        self.assertIn(
            "  PROBLEM: image %s is left queued and could not be deleted "
            "(no); delete it with 'openstack image delete %s'\n"
            % (base.IMAGE_ID, base.IMAGE_ID), out)

    def test_recover_of_a_corrupt_record_fails(self):
        os.makedirs(self.journal_dir)
        with open(self.path, 'w') as f:
            f.write('[]')

        code, out = self._main('recover')

        self.assertEqual(1, code)
        self.assertEqual('%s: corrupt\n  PROBLEM: %s: not a record\n'
                         % (base.IMAGE_ID, self.path), out)

    def test_recover_skips_a_snapshot_in_flight_and_succeeds(self):
        self._record(alive=True)

        code, reports = self._main_json('recover')

        self.assertEqual(0, code)
        self.assertEqual(['in flight'], [r['state'] for r in reports])
        self.conn.mock.defineXML.assert_not_called()

    def test_recover_json_is_the_reports(self):
        self._record()

        code, reports = self._main_json('recover')

        self.assertEqual(0, code)
        self.assertEqual(
            [{'record': self.path, 'state': 'recovered',
              'image_id': base.IMAGE_ID,
              'instance_uuid': base.INSTANCE_UUID, 'phase': 'copying',
              'actions': ['redefined the domain instance-00000001 from its '
                          'saved XML',
                          'deleted image %s left queued' % base.IMAGE_ID],
              'problems': [], 'pending': [], 'left_alone': [],
              'attempts': 1}], reports)

    def test_recover_that_cannot_finish_keeps_the_record_and_fails(self):
        self._record(work_dir=self.work_dir)
        self.image_api.delete.side_effect = \
            nova_exception.GlanceConnectionFailed(server='glance:9292',
                                                  reason='refused')

        code, out = self._main('recover')

        self.assertEqual(1, code)
        self.assertEqual(
            '%s: incomplete\n'
            '  done: redefined the domain instance-00000001 from its saved '
            'XML\n'
            '  PROBLEM: image %s is left queued and could not be deleted '
            '(Connection to glance host glance:9292 failed: refused); '
            "delete it with 'openstack image delete %s'\n"
            '  still to do: delete image %s (left queued)\n'
            % ((base.IMAGE_ID,) * 4), out)
        self.assertTrue(os.path.exists(self.path))

        # The next attempt says which it is.
        self.image_api.delete.side_effect = None
        self.stdout.truncate(0)
        self.stdout.seek(0)
        code, out = self._main('recover')
        self.assertEqual((0, '%s: recovered (attempt 2)\n'
                          '  done: deleted image %s left queued\n'
                          % (base.IMAGE_ID, base.IMAGE_ID)), (code, out))

    def test_recover_says_what_it_left_alone(self):
        # A snapshot of the instance in flight owns its domain now.
        self._record(image_id=OTHER_IMAGE, alive=True, persistent=False)
        self._record()

        code, out = self._main('recover')

        self.assertEqual(1, code)
        self.assertIn('%s: in flight\n' % OTHER_IMAGE, out)
        self.assertIn(
            '%s: incomplete\n'
            '  done: deleted image %s left queued\n'
            '  PROBLEM: not done: redefine the domain instance-00000001 from '
            'its saved XML: snapshot %s of the same instance is in flight '
            '(pid %d, phase copying) and owns the domain now; run recover '
            'again once it is done\n'
            '  still to do: redefine the domain instance-00000001 from its '
            'saved XML\n'
            % (base.IMAGE_ID, base.IMAGE_ID, OTHER_IMAGE, os.getpid()), out)
        self.conn.mock.defineXML.assert_not_called()

    def test_recover_prints_the_files_of_no_record(self):
        os.makedirs(self.snapshots_dir)
        saved = os.path.join(self.snapshots_dir, base.INSTANCE_UUID + '.xml')
        with open(saved, 'w') as f:
            f.write(self.saved_xml)
        self.domain.persistent = True

        code, out = self._main('recover')

        self.assertEqual(
            (0, '%s: deleted\n  done: deleted %s: its domain is persistent '
             'again and no record needs it\n' % (saved, saved)), (code, out))
        self.assertFalse(os.path.exists(saved))

    def test_recover_of_a_saved_xml_of_a_transient_domain_fails(self):
        os.makedirs(self.snapshots_dir)
        saved = os.path.join(self.snapshots_dir, base.INSTANCE_UUID + '.xml')
        with open(saved, 'w') as f:
            f.write(self.saved_xml)

        code, out = self._main('recover')

        self.assertEqual(1, code)
        self.assertTrue(out.startswith('%s: kept\n  PROBLEM: ' % saved), out)
        self.assertTrue(os.path.exists(saved))

    # --- check --------------------------------------------------------------

    def _rootwrap_conf(self, *filters_dirs):
        """A rootwrap.conf in tmp listing ``filters_dirs``."""
        conf = os.path.join(self.tmp, 'etc', 'rootwrap.conf')
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        with open(conf, 'w') as f:
            f.write('[DEFAULT]\nfilters_path=%s\nexec_dirs=/usr/bin\n'
                    % ','.join(filters_dirs))
        self.flags(rootwrap_config=conf)
        return conf

    def _filters(self, directory):
        """An earlier release's snapdriver.filters, left installed."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, 'snapdriver.filters')
        with open(path, 'w') as f:
            f.write('[Filters]\nqemu-img: CommandFilter, qemu-img, root\n')
        return path

    def test_no_filters_installed_is_ok(self):
        compute_d = os.path.join(self.tmp, 'rootwrap.d')
        os.makedirs(compute_d)
        with open(os.path.join(compute_d, 'compute.filters'), 'w') as f:
            f.write('[Filters]\n')
        self._rootwrap_conf(compute_d)

        self.assertEqual(
            {'check': 'no root commands', 'result': 'OK',
             'detail': 'nova-snapdriver needs no rootwrap filters and no '
                       'privsep; none of an earlier release is installed'},
            manage._check_rootwrap())

    def test_stale_filters_fail_naming_the_file_to_remove(self):
        other = os.path.join(self.tmp, 'usr-share-rootwrap')
        stale = self._filters(os.path.join(self.tmp, 'rootwrap.d'))
        self._rootwrap_conf(other, os.path.dirname(stale))

        result = manage._check_rootwrap()

        self.assertEqual(('no root commands', 'FAIL'),
                         (result['check'], result['result']))
        self.assertTrue(result['detail'].startswith(
            'remove %s: nova-snapdriver runs no command as root any more'
            % stale), result['detail'])

    def test_stale_filters_in_every_filters_dir_are_all_named(self):
        first = self._filters(os.path.join(self.tmp, 'a'))
        second = self._filters(os.path.join(self.tmp, 'b'))
        self._rootwrap_conf(os.path.dirname(first), os.path.dirname(second))

        result = manage._check_rootwrap()

        self.assertIn('remove %s, %s:' % (first, second), result['detail'])

    def test_unreadable_rootwrap_conf_looks_beside_it(self):
        # No rootwrap.conf (nova runs none any more): its usual rootwrap.d
        # is still looked at.
        stale = self._filters(os.path.join(self.tmp, 'etc', 'rootwrap.d'))
        self.flags(rootwrap_config=os.path.join(self.tmp, 'etc',
                                                'rootwrap.conf'))

        result = manage._check_rootwrap()

        self.assertEqual('FAIL', result['result'])
        self.assertIn('remove %s:' % stale, result['detail'])

    def test_unreadable_rootwrap_conf_and_nothing_beside_it_is_ok(self):
        self.flags(rootwrap_config=os.path.join(self.tmp, 'none', 'r.conf'))

        self.assertEqual('OK', manage._check_rootwrap()['result'])

    # --- paths and qemu-img -----------------------------------------------

    def _instances(self):
        instances = os.path.join(self.tmp, 'instances')
        self.flags(instances_path=instances)
        return instances

    def test_paths_present_and_usable_are_ok(self):
        cache = os.path.join(self._instances(), '_base')
        os.makedirs(cache)
        os.makedirs(self.snapshots_dir)

        self.assertEqual(
            [{'check': 'image cache access', 'result': 'OK',
              'detail': '%s: readable by %s' % (cache, manage._user())},
             {'check': 'snapshots directory access', 'result': 'OK',
              'detail': '%s: writable by %s' % (self.snapshots_dir,
                                                manage._user())}],
            manage._check_paths())

    def test_paths_missing_are_warnings(self):
        cache = os.path.join(self._instances(), 'cache')
        self.flags(subdirectory_name='cache', group='image_cache')

        self.assertEqual(
            [('image cache access', 'WARN',
              '%s: missing (nova creates it when needed)' % cache),
             ('snapshots directory access', 'WARN',
              '%s: missing (nova creates it when needed)'
              % self.snapshots_dir)],
            [(r['check'], r['result'], r['detail'])
             for r in manage._check_paths()])

    def test_path_that_is_no_directory_fails(self):
        self._instances()
        os.makedirs(os.path.join(self.tmp, 'instances', '_base'))
        with open(self.snapshots_dir, 'w') as f:
            f.write('a file where a directory should be')

        cache, snapshots = manage._check_paths()

        self.assertEqual('OK', cache['result'])
        self.assertEqual(
            ('FAIL', '%s: NOT writable by %s' % (self.snapshots_dir,
                                                 manage._user())),
            (snapshots['result'], snapshots['detail']))

    def test_path_without_the_rights_fails(self):
        cache = os.path.join(self._instances(), '_base')
        os.makedirs(cache)
        os.makedirs(self.snapshots_dir)
        # As a user without the rights (root has them all).
        self.useFixture(fixtures.MockPatchObject(
            manage.os, 'access', autospec=True,
            side_effect=lambda path, mode: path == cache))

        cache_result, snapshots = manage._check_paths()

        self.assertEqual('OK', cache_result['result'])
        self.assertEqual('FAIL', snapshots['result'])
        self.assertIn('NOT writable', snapshots['detail'])

    def test_qemu_img_commands_of_a_snapshot_run_for_real(self):
        result = manage._check_qemu_img()

        self.assertEqual(
            {'check': 'qemu-img as %s' % manage._user(), 'result': 'OK',
             'detail': 'create, info, measure and convert of a json: chain '
                       'work in %s' % self.snapshots_dir}, result)
        # Made where snapshots are made, and left nothing behind.
        self.assertEqual([], os.listdir(self.snapshots_dir))

    def test_qemu_img_check_runs_the_snapshot_s_command_lines(self):
        execute = mock.Mock(wraps=manage.qemu_img.processutils.execute)
        self.useFixture(fixtures.MockPatchObject(
            manage.qemu_img.processutils, 'execute', execute))

        self.assertEqual('OK', manage._check_qemu_img()['result'])

        commands = [(c.args[1], c.args[-1] if c.args[1] == 'info' else None,
                     c.kwargs['prlimit']) for c in execute.call_args_list]
        limits = novacompat.qemu_img_limits()
        self.assertEqual(['create', 'info', 'measure', 'create', 'convert'],
                         [c[0] for c in commands])
        self.assertEqual([None, limits, limits, None, None],
                         [c[2] for c in commands])
        self.assertTrue(commands[1][1].startswith('json:'))
        for call in execute.call_args_list:
            self.assertNotIn('run_as_root', call.kwargs)

    def test_qemu_img_missing_fails(self):
        # processutils runs qemu-img with only LC_ALL and LANG in its
        # environment, so PATH is the default one: a missing binary is
        # what the process boundary says.
        self.useFixture(fixtures.MockPatchObject(
            manage.qemu_img.processutils, 'execute', autospec=True,
            side_effect=FileNotFoundError(2, 'No such file or directory',
                                          'qemu-img')))

        result = manage._check_qemu_img()

        self.assertEqual('FAIL', result['result'])
        self.assertTrue(result['detail'].startswith(
            "a snapshot's qemu-img commands failed in %s: 'qemu-img create"
            % self.snapshots_dir), result['detail'])
        self.assertIn('No such file or directory', result['detail'])
        self.assertEqual([], os.listdir(self.snapshots_dir))

    def test_qemu_img_in_a_snapshots_directory_it_cannot_use_fails(self):
        with open(self.snapshots_dir, 'w') as f:
            f.write('not a directory')

        result = manage._check_qemu_img()

        self.assertEqual('FAIL', result['result'])
        self.assertIn("a snapshot's qemu-img commands failed in %s"
                      % self.snapshots_dir, result['detail'])

    def test_qemu_img_failing_names_its_error(self):
        real = manage.qemu_img.processutils.execute

        def execute(*cmd, **kwargs):
            if cmd[1] == 'convert':
                raise processutils.ProcessExecutionError(
                    exit_code=1, stderr='Could not open overlay')
            return real(*cmd, **kwargs)
        self.useFixture(fixtures.MockPatchObject(
            manage.qemu_img.processutils, 'execute', execute))

        result = manage._check_qemu_img()

        self.assertEqual('FAIL', result['result'])
        self.assertIn('failed with exit code 1: Could not open overlay',
                      result['detail'])
        self.assertEqual([], os.listdir(self.snapshots_dir))

    def test_state_dir_that_does_not_exist_yet_is_ok(self):
        self.assertEqual(
            {'check': 'journal directory', 'result': 'OK',
             'detail': '%s will be created with mode 0700'
                       % self.journal_dir},
            manage._check_state_dir())

    def test_state_dir_made_by_the_journal_is_ok(self):
        self._record()

        result = manage._check_state_dir()

        self.assertEqual('OK', result['result'])
        self.assertEqual('%s: mode 700, owner uid %d (want 0700, uid %d)'
                         % (self.journal_dir, os.geteuid(), os.geteuid()),
                         result['detail'])

    def test_state_dir_readable_by_others_fails(self):
        os.mkdir(self.journal_dir)
        for mode in (0o755, 0o710, 0o701):
            os.chmod(self.journal_dir, mode)
            result = manage._check_state_dir()
            self.assertEqual('FAIL', result['result'], oct(mode))
            self.assertIn('mode %o' % mode, result['detail'])

    def test_state_dir_owned_by_another_user_fails(self):
        os.mkdir(self.journal_dir, 0o700)
        uid = os.geteuid()
        self.useFixture(fixtures.MockPatchObject(
            manage.os, 'geteuid', return_value=uid + 1))

        result = manage._check_state_dir()

        self.assertEqual('FAIL', result['result'])
        self.assertIn('owner uid %d (want 0700, uid %d)' % (uid, uid + 1),
                      result['detail'])

    def test_space_is_ok_above_the_reserve_and_a_warning_below(self):
        os.makedirs(self.snapshots_dir)
        self.flags(reserved_space_mb=0, group='snapdriver')
        ok = manage._check_space()
        self.flags(reserved_space_mb=2 ** 40, group='snapdriver')
        low = manage._check_space()

        self.assertEqual(('OK', 'WARN'), (ok['result'], low['result']))
        self.assertTrue(low['detail'].startswith(self.snapshots_dir + ': '))
        self.assertIn('free (reserve 1073741824.0 GiB)', low['detail'])

    def test_space_of_a_missing_directory_fails(self):
        result = manage._check_space()

        self.assertEqual('FAIL', result['result'])
        self.assertIn(self.snapshots_dir, result['detail'])

    def test_features_of_a_good_host(self):
        results = manage._check_features(self.conn.mock)

        self.assertEqual(
            [('versions', 'OK'), ('blockRebase copy', 'OK'),
             ('blockCopy transient job', 'OK'), ('backup API', 'OK')],
            [(r['check'], r['result']) for r in results])
        self.assertEqual('libvirt 9.0.0, QEMU 8.2.0 (nova 34 needs libvirt '
                         '>= 8.0.0 and QEMU >= 6.2.0)', results[0]['detail'])
        self.conn.mock.getDomainCapabilities.assert_called_once_with(
            None, None, None, None, 0)

    def test_features_of_an_old_host(self):
        self.conn.mock.getLibVersion.return_value = 7010000
        self.conn.mock.getVersion.return_value = 6001000
        self.conn.mock.getDomainCapabilities.side_effect = (
            base.libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, 'unsupported'))

        versions, _copy, _transient, backup = manage._check_features(
            self.conn.mock)

        self.assertEqual('FAIL', versions['result'])
        self.assertIn('libvirt 7.10.0, QEMU 6.1.0', versions['detail'])
        # No backup API is a warning, not a failure.
        self.assertEqual('WARN', backup['result'])

    def test_qemu_too_old_alone_fails(self):
        self.conn.mock.getVersion.return_value = 6001999

        versions = manage._check_features(self.conn.mock)[0]

        self.assertEqual('FAIL', versions['result'])

    def _good_host(self):
        """Every path in tmp, qemu-img for real, no stale filters."""
        os.makedirs(os.path.join(self._instances(), '_base'))
        os.makedirs(self.snapshots_dir)
        self._rootwrap_conf(os.path.join(self.tmp, 'rootwrap.d'))
        self.flags(reserved_space_mb=0, group='snapdriver')
        self.flags(compute_driver='snapdriver.SnapLibvirtDriver')

    def test_check_of_a_good_host_succeeds(self):
        self._good_host()

        code, out = self._main('check')

        self.assertEqual(0, code, out)
        lines = out.splitlines()
        self.assertEqual(
            ['OK   compute_driver', 'OK   driver import',
             'OK   versions', 'OK   blockRebase copy',
             'OK   blockCopy transient job', 'OK   backup API',
             'OK   image cache access',
             'OK   snapshots directory access',
             'OK   qemu-img as %s' % manage._user(), 'OK   no root commands',
             'OK   snapshots directory', 'OK   journal directory'],
            [line.split(':')[0] for line in lines])

    def test_check_with_only_warnings_succeeds(self):
        self._good_host()
        self.conn.mock.getDomainCapabilities.return_value = '<caps/>'
        os.rmdir(os.path.join(self.tmp, 'instances', '_base'))

        code, results = self._main_json('check')

        self.assertEqual(0, code)
        self.assertEqual(
            [('backup API', 'WARN'), ('image cache access', 'WARN')],
            [(r['check'], r['result']) for r in results
             if r['result'] != 'OK'])

    def test_check_with_a_failure_fails_and_names_it(self):
        self._good_host()
        stale = self._filters(os.path.join(self.tmp, 'rootwrap.d'))
        os.mkdir(self.journal_dir, 0o755)
        os.chmod(self.journal_dir, 0o755)

        code, out = self._main('check')

        self.assertEqual(1, code)
        self.assertIn('FAIL no root commands: remove %s:' % stale, out)
        self.assertIn('FAIL journal directory: %s: mode 755'
                      % self.journal_dir, out)

    def test_check_json_is_the_results(self):
        self._good_host()

        code, results = self._main_json('check')

        self.assertEqual(0, code)
        self.assertEqual(12, len(results))
        for r in results:
            self.assertEqual({'check', 'result', 'detail'}, set(r))
        self.assertEqual(['OK'] * 12, [r['result'] for r in results])

    def test_check_names_the_compute_driver_to_set(self):
        self._good_host()
        self.flags(compute_driver='libvirt.LibvirtDriver')

        code, out = self._main('check')

        self.assertEqual(1, code)
        self.assertIn('FAIL compute_driver: [DEFAULT] compute_driver = '
                      'libvirt.LibvirtDriver (set it to '
                      'snapdriver.SnapLibvirtDriver', out)

    def test_check_fails_when_nova_cannot_import_the_driver(self):
        # As with nova from distribution packages and the driver from pip.
        self._good_host()
        real_import = manage.reexport.importlib.import_module

        def no_reexport(name, *args):
            if name == 'nova.virt.snapdriver':
                raise ImportError("No module named 'nova.virt.snapdriver'")
            return real_import(name, *args)
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.reexport.importlib.import_module',
            side_effect=no_reexport))

        code, out = self._main('check')

        self.assertEqual(1, code)
        line, = [x for x in out.splitlines() if 'driver import' in x]
        self.assertTrue(line.startswith('FAIL driver import: nova ('), line)
        self.assertIn('cannot import nova.virt.snapdriver', line)
        self.assertIn('Run "nova-snapdriver-manage reexport" as root', line)

    # --- purge: the driver's state goes, unless a snapshot needs it -------

    def _dirs(self):
        os.makedirs(self.snapshots_dir, exist_ok=True)
        ours = os.path.join(self.snapshots_dir, '0123abcd.0123456789ab')
        novas = os.path.join(self.snapshots_dir, 'tmpa1b2c3d4')
        for path in (ours, novas):
            os.mkdir(path)
        return ours, novas

    def test_purge_with_a_record_refuses_and_removes_nothing(self):
        ours, novas = self._dirs()
        self._record()

        code, out = self._main('purge')

        self.assertEqual(1, code)
        self.assertIn('Refused: 1 snapshot record(s) in %s: %s.json'
                      % (self.journal_dir, base.IMAGE_ID), out)
        self.assertIn('"nova-snapdriver-manage recover"', out)
        for path in (ours, novas, self.path):
            self.assertTrue(os.path.exists(path), path)

    def test_purge_removes_the_journal_and_our_work_dirs_only(self):
        ours, novas = self._dirs()
        os.makedirs(self.journal_dir, exist_ok=True)

        code, out = self._main('purge')

        self.assertEqual(0, code, out)
        self.assertEqual(['Removed %s' % ours,
                          'Removed %s' % self.journal_dir],
                         out.splitlines())
        self.assertFalse(os.path.exists(ours))
        self.assertTrue(os.path.isdir(novas))
        self.assertFalse(os.path.exists(self.journal_dir))

    def test_purge_that_cannot_remove_says_what_to_do(self):
        ours, _novas = self._dirs()
        self.useFixture(fixtures.MockPatch(
            'shutil.rmtree', side_effect=PermissionError(13, 'denied')))

        code, out = self._main('purge')

        self.assertEqual(1, code)
        self.assertIn('Refused: could not remove %s' % ours, out)
        self.assertIn("run purge as nova-compute's user, or as root", out)
        self.assertTrue(os.path.isdir(ours))

    def test_purge_twice_finds_nothing(self):
        self._main('purge')
        self.stdout.truncate(0)
        self.stdout.seek(0)

        self.assertEqual((0, 'Nothing to purge.\n'), self._main('purge'))


class VersionTestCase(base.TestCase):

    def test_libvirt_version_numbers_read_as_dotted_versions(self):
        self.assertEqual(['8.0.0', '10.10.1', '6.2.0'],
                         [manage._version(n)
                          for n in (8000000, 10010001, 6002000)])
