"""nova-snapdriver-manage: arguments, the three commands, exit statuses.

Boundaries only: nova's config parsing (``nova.config.parse_args``),
``libvirt.open`` (a FakeConnection), Glance (an autospec'd image API) and
the ``qemu-img`` process.  The journal, recovery and oslo.rootwrap (with
the repository's own filters file) run for real on tmp files.
"""

import io
import json
import os
import pathlib
import subprocess
from unittest import mock

import fixtures
import libvirt

from nova import exception as nova_exception
from nova.image import glance

from nova_snapdriver.cmd import manage
from nova_snapdriver import journal
from tests.unit import base

ROOTWRAP_D = str(pathlib.Path(__file__).resolve().parents[2] /
                 'etc' / 'nova' / 'rootwrap.d')
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
        self.image_api = mock.create_autospec(glance.API, instance=True)
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
              'problems': []}], reports)

    # --- check --------------------------------------------------------------

    def _rootwrap(self, instances_path=INSTANCES, snapshots=None,
                  exec_dirs=None):
        """A rootwrap.conf using this repository's filters."""
        if exec_dirs is None:
            bin_dir = os.path.join(self.tmp, 'bin')
            os.makedirs(bin_dir, exist_ok=True)
            exe = os.path.join(bin_dir, 'qemu-img')
            with open(exe, 'w') as f:
                f.write('#!/bin/sh\nexit 1\n')
            os.chmod(exe, 0o700)
            exec_dirs = bin_dir
        conf = os.path.join(self.tmp, 'rootwrap.conf')
        with open(conf, 'w') as f:
            f.write('[DEFAULT]\nfilters_path=%s\nexec_dirs=%s\n'
                    % (ROOTWRAP_D, exec_dirs))
        self.flags(rootwrap_config=conf, instances_path=instances_path)
        self.flags(snapshots_directory=snapshots or os.path.join(
            instances_path, 'snapshots'), group='libvirt')

    def test_rootwrap_filters_allow_the_commands_under_nova_defaults(self):
        self._rootwrap()

        self.assertEqual(
            {'check': 'rootwrap filters', 'result': 'OK',
             'detail': 'qemu-img create, info, measure and convert allowed'},
            manage._check_rootwrap())

    def test_rootwrap_filters_refuse_another_instances_path(self):
        self._rootwrap(instances_path='/srv/nova/instances')

        self.assertEqual(
            {'check': 'rootwrap filters', 'result': 'FAIL',
             'detail': 'qemu-img create, info, measure, convert refused for '
                       'paths under /srv/nova/instances: install '
                       'etc/nova/rootwrap.d/snapdriver.filters into one of '
                       '%s and match its path prefix to instances_path'
                       % ROOTWRAP_D},
            manage._check_rootwrap())

    def test_rootwrap_filters_refuse_a_snapshots_directory_elsewhere(self):
        self._rootwrap(snapshots='/srv/snapshots')

        result = manage._check_rootwrap()

        self.assertEqual('FAIL', result['result'])
        self.assertTrue(result['detail'].startswith(
            'qemu-img create, convert refused'), result['detail'])

    def test_rootwrap_without_a_qemu_img_to_run_refuses_everything(self):
        empty = os.path.join(self.tmp, 'empty')
        os.mkdir(empty)
        self._rootwrap(exec_dirs=empty)

        result = manage._check_rootwrap()

        self.assertEqual('FAIL', result['result'])
        self.assertIn('create, info, measure, convert refused',
                      result['detail'])

    def test_rootwrap_config_that_cannot_be_loaded_fails(self):
        missing = os.path.join(self.tmp, 'no-rootwrap.conf')
        self.flags(rootwrap_config=missing)

        result = manage._check_rootwrap()

        self.assertEqual('FAIL', result['result'])
        self.assertTrue(result['detail'].startswith(
            'cannot load %s: ' % missing), result['detail'])

    def test_rootwrap_disabled_is_ok(self):
        self.flags(disable_rootwrap=True, group='workarounds')
        self.flags(rootwrap_config=os.path.join(self.tmp, 'none'))

        self.assertEqual(
            {'check': 'rootwrap filters', 'result': 'OK',
             'detail': '[workarounds] disable_rootwrap is set: sudo is used'},
            manage._check_rootwrap())

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

    def _run_qemu_img(self, **kw):
        return self.useFixture(fixtures.MockPatchObject(
            manage.subprocess, 'run', autospec=True, **kw)).mock

    def test_qemu_img_measure_working_is_ok(self):
        run = self._run_qemu_img(return_value=subprocess.CompletedProcess(
            [], 0, stdout='{"required": 1114112, "fully-allocated": 1}'))

        self.assertEqual('OK', manage._check_qemu_img()['result'])
        run.assert_called_once_with(
            ['qemu-img', 'measure', '--size', '1M', '-O', 'qcow2',
             '--output=json'], check=True, capture_output=True, text=True)

    def test_qemu_img_broken_missing_or_garbled_fails(self):
        run = self._run_qemu_img()
        garbled = subprocess.CompletedProcess([], 0, stdout='nope')
        for effect, detail in (
                (subprocess.CalledProcessError(1, ['qemu-img']),
                 'returned non-zero exit status 1'),
                (FileNotFoundError(2, 'No such file', 'qemu-img'),
                 'No such file'),
                (lambda *a, **k: garbled, 'Expecting value')):
            run.reset_mock()
            run.side_effect = effect
            result = manage._check_qemu_img()
            self.assertEqual('FAIL', result['result'], detail)
            self.assertIn(detail, result['detail'])
            run.assert_called_once_with(mock.ANY, check=True,
                                        capture_output=True, text=True)

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
        self._rootwrap()
        self._run_qemu_img(return_value=subprocess.CompletedProcess(
            [], 0, stdout='{"required": 1}'))
        self.flags(reserved_space_mb=0, group='snapdriver')
        # [libvirt] snapshots_directory is nova's default, not in tmp:
        # ask the tmp filesystem for its space instead.
        tmp_statvfs = os.statvfs(self.tmp)
        self.statvfs = self.useFixture(fixtures.MockPatchObject(
            manage.os, 'statvfs', return_value=tmp_statvfs)).mock

    def test_check_of_a_good_host_succeeds(self):
        self._good_host()

        code, out = self._main('check')

        self.assertEqual(0, code)
        lines = out.splitlines()
        self.assertEqual(
            ['OK   versions', 'OK   blockRebase copy',
             'OK   blockCopy transient job', 'OK   backup API',
             'OK   qemu-img measure', 'OK   rootwrap filters',
             'OK   snapshots directory', 'OK   journal directory'],
            [line.split(':')[0] for line in lines])
        self.assertEqual('OK   rootwrap filters: qemu-img create, info, '
                         'measure and convert allowed', lines[5])
        self.statvfs.assert_called_once_with(INSTANCES + '/snapshots')

    def test_check_with_only_warnings_succeeds(self):
        self._good_host()
        self.conn.mock.getDomainCapabilities.return_value = '<caps/>'
        self.flags(reserved_space_mb=2 ** 40, group='snapdriver')

        code, results = self._main_json('check')

        self.assertEqual(0, code)
        self.assertEqual(
            {'backup API': 'WARN', 'snapshots directory': 'WARN'},
            {r['check']: r['result'] for r in results
             if r['result'] != 'OK'})

    def test_check_with_a_failure_fails_and_names_it(self):
        self._good_host()
        self._rootwrap(instances_path='/srv/nova/instances')
        os.mkdir(self.journal_dir, 0o755)
        os.chmod(self.journal_dir, 0o755)

        code, out = self._main('check')

        self.assertEqual(1, code)
        self.assertIn('FAIL rootwrap filters: qemu-img create, info, '
                      'measure, convert refused for paths under '
                      '/srv/nova/instances', out)
        self.assertIn('FAIL journal directory: %s: mode 755'
                      % self.journal_dir, out)

    def test_check_json_is_the_results(self):
        self._good_host()

        code, results = self._main_json('check')

        self.assertEqual(0, code)
        self.assertEqual(8, len(results))
        for r in results:
            self.assertEqual({'check', 'result', 'detail'}, set(r))
        self.assertEqual(['OK'] * 8, [r['result'] for r in results])


class VersionTestCase(base.TestCase):

    def test_libvirt_version_numbers_read_as_dotted_versions(self):
        self.assertEqual(['8.0.0', '10.10.1', '6.2.0'],
                         [manage._version(n)
                          for n in (8000000, 10010001, 6002000)])
