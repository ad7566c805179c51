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

"""SnapLibvirtDriver.snapshot(): the phases end to end, at the boundaries.

The driver is real; libvirt is a FakeDomain behind nova's Guest and an
autospec'd Host, qemu-img a fake ``processutils.execute`` writing real files
in a tmp ``[libvirt] snapshots_directory``, Glance an autospec'd image API.
"""

import io
import json
import os
import stat
import threading
from unittest import mock

import fixtures
import libvirt
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_config import generator

from nova.compute import task_states
from nova import exception as nova_exception
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import host as libvirt_host

from nova_snapdriver import chain
from nova_snapdriver import coldstream
from nova_snapdriver import conf
from nova_snapdriver import driver
from nova_snapdriver import exception
from nova_snapdriver import journal
from nova_snapdriver import plan as snapshot_plan
from nova_snapdriver import progress
from tests.unit import base

DISK = '/var/lib/nova/instances/%s/disk' % base.INSTANCE_UUID
GENERATOR_CONF = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    'etc', 'nova', 'nova-snapdriver-config-generator.conf')
IMAGE_DATA = b'the flat snapshot image'

# Domain calls that change it; a cold snapshot makes none of them.
DOMAIN_CHANGES = {'undefineFlags', 'undefine', 'blockRebase', 'blockCopy',
                  'blockJobAbort', 'fsFreeze', 'fsThaw', 'suspend',
                  'resume', 'managedSave', 'snapshotCreateXML', 'destroy'}


class ConfTestCase(base.TestCase):

    def test_snapdriver_options_are_registered_with_their_defaults(self):
        # The base test case points journal_path into tmp; look under it.
        cfg.CONF.clear_override('journal_path', group='snapdriver')
        self.flags(state_path=self.tmp)

        self.assertEqual(
            {'block_job_timeout': 1800, 'block_job_bandwidth': 0,
             'block_job_poll_interval': 0.5, 'progress_log_interval': 10,
             'reserved_space_mb': 256, 'convert_coroutines': 16,
             'capture_method': 'auto', 'compression_type': 'zlib',
             'journal_path': os.path.join(self.tmp, 'snapdriver-journal'),
             'libvirt_reconnect_timeout': 60, 'recovery_interval': 300,
             'stream_scratch_max_mb': 0, 'verify_upload_hash': True},
            {opt.name: cfg.CONF.snapdriver[opt.name]
             for opt in conf.snapdriver_opts})

    def test_list_opts_lists_the_snapdriver_group(self):
        (group, opts), = conf.list_opts()

        self.assertEqual('snapdriver', group.name)
        self.assertIs(conf.snapdriver_opts, opts)

    def test_config_generator_writes_a_documented_sample(self):
        """tox -e genconfig: the generator finds us by entry point."""
        out = os.path.join(self.useFixture(fixtures.TempDir()).path,
                           'sample.conf')
        generator.main(['--config-file', GENERATOR_CONF,
                        '--output-file', out])

        with open(out) as f:
            sample = f.read()
        self.assertIn('[snapdriver]', sample)
        for opt in conf.snapdriver_opts:
            self.assertIn('#%s = ' % opt.name, sample)
        self.assertIn('Possible values:', sample)


class SnapshotTestCase(base.TestCase):

    def setUp(self):
        super(SnapshotTestCase, self).setUp()
        # nova's sequence unless a test names another (auto is the default).
        self.flags(reserved_space_mb=0, capture_method='rebase',
                   group='snapdriver')
        self.work_dir = self.fix_work_dir()
        self.overlay = os.path.join(self.work_dir, 'overlay.qcow2')
        self.image_path = os.path.join(self.work_dir, 'image')
        self.xml_path = os.path.join(self.snapshots_dir,
                                     base.INSTANCE_UUID + '.xml')
        # A real disk over a real base in a tmp instances_path.
        self.disk, self.base = self.make_disk()
        self.chain = chain.Node(self.disk, 'qcow2',
                                chain.Node(self.base, 'raw'))
        self.overlay_chain = chain.Node(self.overlay, 'qcow2',
                                        self.chain.backing)
        self.domain = base.FakeDomain(base.file_disk_xml(self.disk))
        self.saved_xml = self.domain.xml(
            libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        # Not in a backup job: what libvirt answers then.
        self.domain.mock.jobStats.return_value = {
            'type': libvirt.VIR_DOMAIN_JOB_NONE}
        self.conn = base.FakeConnection(self.domain)
        self.driver = self.make_driver()
        self.connect_host(self.driver, self.conn)
        self.glance = self.useFixture(base.FakeGlance(
            self.driver._image_api,
            # What is on disk while the image is sent.
            on_upload=lambda: sorted(os.listdir(self.work_dir)),
            before={'name': 'my snap'}))
        self.uploaded = self.glance.uploaded
        self.record_path = os.path.join(self.journal_dir,
                                        base.IMAGE_ID + '.json')
        self.qemu_img, self.execute = self.patch_execute(base.FakeQemuImg(
            disk_info={'virtual-size': base.DISK_SIZE, 'actual-size': 4096,
                       'format': 'qcow2'},
            required=8192, image_data=IMAGE_DATA))
        self.clock = self.fake_capture_clock()
        self.instance = self.make_instance()
        self.update_task_state = mock.Mock()

    def _snapshot(self):
        return self.driver.snapshot(self.context, self.instance,
                                    base.IMAGE_ID, self.update_task_state)

    def _domain_changes(self):
        return [c for c in self.domain.mock.method_calls
                if c[0] in DOMAIN_CHANGES]

    def _assert_task_states(self, uploading=True):
        expected = [mock.call(task_state=task_states.IMAGE_PENDING_UPLOAD)]
        if uploading:
            expected.append(mock.call(
                task_state=task_states.IMAGE_UPLOADING,
                expected_state=task_states.IMAGE_PENDING_UPLOAD))
        self.assertEqual(expected, self.update_task_state.call_args_list)

    def _assert_cleaned_up(self):
        self.assertFalse(os.path.exists(self.work_dir))
        self.assertTrue(os.path.isdir(self.snapshots_dir))
        # The journal record and its lock are gone too.
        self.assertEqual([], os.listdir(self.journal_dir))

    # --- success ----------------------------------------------------------

    def test_live_snapshot_copies_extracts_and_uploads(self):
        self.instance.os_type = 'linux'

        self.assertIsNone(self._snapshot())

        self._assert_task_states()
        self.assertEqual(
            [mock.call.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                libvirt.VIR_DOMAIN_UNDEFINE_KEEP_TPM |
                libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM),
             mock.call.blockRebase(
                 'vda', self.overlay, 0,
                 libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY |
                 libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT |
                 libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW),
             mock.call.blockJobAbort('vda', flags=0)],
            self._domain_changes())
        self.driver._host.write_instance_config.assert_called_once_with(
            self.saved_xml)
        self.assertEqual(
            [['qemu-img', 'info', '-U', '--output=json',
              self.chain.top().filename()],
             ['qemu-img', 'measure', '-U', '-O', 'qcow2', '--output=json',
              self.chain.filename()],
             ['qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b',
              self.base, '-u', self.overlay, str(base.DISK_SIZE)],
             ['qemu-img', 'convert', '-O', 'qcow2', '-W', '-m', '16',
              self.overlay_chain.filename(), self.image_path]],
            self.qemu_img.commands)
        # The overlay is gone before the upload starts.
        self.assertEqual([(IMAGE_DATA, ['image'])], self.uploaded)
        self.driver._image_api.update.assert_called_once_with(
            self.context, base.IMAGE_ID,
            {'status': 'active', 'name': 'my snap',
             'properties': {'kernel_id': self.instance.kernel_id,
                            'image_location': 'snapshot',
                            'image_state': 'available',
                            'owner_id': self.instance.project_id,
                            'ramdisk_id': self.instance.ramdisk_id,
                            'os_type': 'linux'},
             'disk_format': 'qcow2', 'container_format': 'bare'})
        self._assert_cleaned_up()
        self.assertFalse(os.path.exists(self.xml_path))
        self.assertIn('Snapshot image upload complete in ', self.logs.output)

    def test_cold_snapshot_never_changes_the_domain(self):
        self.domain.state = libvirt.VIR_DOMAIN_SHUTOFF

        self._snapshot()

        self.assertEqual([], self._domain_changes())
        self.driver._host.write_instance_config.assert_not_called()
        # The disk itself is converted; no overlay is made.
        self.assertEqual(
            ['info', 'measure', 'convert'],
            [cmd[1] for cmd in self.qemu_img.commands])
        self.assertEqual(
            ['qemu-img', 'convert', '-O', 'qcow2', '-W', '-m', '16',
             self.chain.filename(), self.image_path],
            self.qemu_img.commands[-1])
        # The disk itself is left where it is.
        self.assertTrue(os.path.exists(self.disk))
        self.assertEqual([(IMAGE_DATA, ['image'])], self.uploaded)
        self._assert_task_states()
        self._assert_cleaned_up()

    def test_compression_and_coroutines_reach_qemu_img_convert(self):
        self.flags(snapshot_compression=True, group='libvirt')
        self.flags(convert_coroutines=3, group='snapdriver')

        self._snapshot()

        self.assertEqual(
            ['qemu-img', 'convert', '-O', 'qcow2', '-c', '-W', '-m', '3',
             self.overlay_chain.filename(), self.image_path],
            self.qemu_img.commands[-1])
        self.assertIn('Extracted a qcow2 image of 23 B (compressed, zlib)',
                      self.logs.output)

    def test_raw_output_format_is_converted_to_and_declared_raw(self):
        self.flags(snapshot_image_format='raw', group='libvirt')

        self._snapshot()

        self.assertEqual(['convert', '-O', 'raw'],
                         self.qemu_img.commands[-1][1:4])
        metadata = self.driver._image_api.update.call_args.args[2]
        self.assertEqual('raw', metadata['disk_format'])

    def test_failing_progress_listener_does_not_break_the_snapshot(self):
        listener = mock.Mock(side_effect=RuntimeError('bar broke'))
        progress.listen(listener)
        self.addCleanup(progress.unlisten, listener)

        self._snapshot()

        self.assertEqual([(IMAGE_DATA, ['image'])], self.uploaded)
        self.assertIn(
            mock.call(base.INSTANCE_UUID, 'upload:done', mock.ANY, None),
            listener.call_args_list)
        self.assertIn('Progress listener failed; ignoring it',
                      self.logs.output)

    # --- before the snapshot starts -------------------------------------

    def test_instance_not_found_becomes_instance_not_running(self):
        self.driver._host.get_guest.side_effect = (
            nova_exception.InstanceNotFound(instance_id=base.INSTANCE_UUID))

        exc = self.assertRaises(nova_exception.InstanceNotRunning,
                                self._snapshot)

        self.assertEqual(base.INSTANCE_UUID, exc.kwargs['instance_id'])
        self.update_task_state.assert_not_called()
        self.assertEqual([], self.qemu_img.commands)

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'snapshot',
                       autospec=True)
    def test_disk_not_handled_is_left_to_the_parent_driver(self, parent):
        self.domain.disk_xml = (
            "<disk type='network' device='disk'>"
            "<driver name='qemu' type='raw'/>"
            "<source protocol='rbd' name='vms/disk'/>"
            "<target dev='vda' bus='virtio'/>%(mirror)s</disk>")

        self.assertIs(parent.return_value, self._snapshot())

        parent.assert_called_once_with(
            self.driver, self.context, self.instance, base.IMAGE_ID,
            self.update_task_state)
        self.update_task_state.assert_not_called()
        self.assertEqual([], self.qemu_img.commands)
        self.driver._image_api.get.assert_not_called()
        self.assertIn("Snapshot of rbd disk rbd:vms/disk is left to nova's "
                      "libvirt driver", self.logs.output)

    def test_plan_failure_touches_nothing_and_sets_no_task_state(self):
        self.qemu_img.required = 2 ** 62

        self.assertRaises(exception.InsufficientSnapshotSpace,
                          self._snapshot)

        self.update_task_state.assert_not_called()
        self.assertEqual([], self._domain_changes())
        self.assertFalse(os.path.exists(self.work_dir))
        # Nothing began: nothing journaled.
        self.assertFalse(os.path.exists(self.journal_dir))

    def test_disk_whose_header_names_a_host_file_is_never_read(self):
        secret = base.make_raw(os.path.join(self.tmp, 'secret'), b'secret')
        os.unlink(self.disk)
        base.make_image(self.disk, backing=secret, backing_fmt='raw')

        exc = self.assertRaises(exception.UnsafeDiskChain, self._snapshot)

        self.assertIn("its backing file %s is not a file in nova's image "
                      'cache' % secret, str(exc))
        self.assertEqual([], self.qemu_img.commands)
        self.update_task_state.assert_not_called()
        self.assertEqual([], self._domain_changes())
        self.assertFalse(os.path.exists(self.work_dir))
        self.driver._image_api.update.assert_not_called()

    def test_backup_reaches_glance_as_the_image_without_a_convert(self):
        self.flags(capture_method='backup', group='snapdriver')
        self.domain.mock.jobStats.side_effect = lambda flags=0: (
            {'type': libvirt.VIR_DOMAIN_JOB_COMPLETED,
             'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
            if flags else {'type': libvirt.VIR_DOMAIN_JOB_NONE})

        self._snapshot()

        self.assertEqual(['info', 'measure', 'create'],
                         [cmd[1] for cmd in self.qemu_img.commands])
        # What was uploaded is the (empty, here) qcow2 nova created and
        # QEMU filled.
        (data, files), = self.uploaded
        self.assertEqual(b'QFI\xfb', data[:4])
        self.assertEqual(['image'], files)
        self._assert_cleaned_up()

    # --- failures while it runs -----------------------------------------

    def test_image_deleted_during_upload_is_reraised(self):
        error = nova_exception.ImageNotFound(image_id=base.IMAGE_ID)
        self.glance.send_error = error

        raised = self.assertRaises(nova_exception.ImageNotFound,
                                   self._snapshot)

        self.assertIs(error, raised)
        self._assert_task_states()
        self._assert_cleaned_up()
        self.assertIn('Failed to snapshot image because it was deleted',
                      self.logs.output)

    def test_domain_vanishing_becomes_instance_not_found(self):
        self.domain.mock.blockRebase.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_NO_DOMAIN)

        exc = self.assertRaises(nova_exception.InstanceNotFound,
                                self._snapshot)

        self.assertEqual(base.INSTANCE_UUID, exc.kwargs['instance_id'])
        self.driver._host.write_instance_config.assert_called_once_with(
            self.saved_xml)
        self._assert_task_states(uploading=False)
        self._assert_cleaned_up()

    def test_other_libvirt_error_is_reraised_unchanged(self):
        error = base.libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED)
        self.domain.mock.blockRebase.side_effect = error

        raised = self.assertRaises(libvirt.libvirtError, self._snapshot)

        self.assertIs(error, raised)
        self._assert_cleaned_up()
        self.assertIn('Failed to snapshot image', self.logs.output)

    def test_extract_failure_removes_the_work_dir_and_never_uploads(self):
        self.qemu_img.fail['convert'] = processutils.ProcessExecutionError(
            exit_code=1, stderr='No space left on device')

        exc = self.assertRaises(exception.QemuImgFailed, self._snapshot)

        self.assertIn('No space left on device', str(exc))
        self._assert_task_states(uploading=False)
        self.driver._image_api.update.assert_not_called()
        self._assert_cleaned_up()
        # The domain was put back before the extract failed.
        self.driver._host.write_instance_config.assert_called_once_with(
            self.saved_xml)

    def test_damaged_upload_fails_the_snapshot_and_cleans_up(self):
        self.glance.stored = b'damaged'

        self.assertRaises(exception.UploadVerificationFailed, self._snapshot)

        self._assert_cleaned_up()

    def test_redefine_failure_leaves_only_the_saved_xml_behind(self):
        self.driver._host.write_instance_config.side_effect = (
            libvirt.libvirtError('define refused'))

        exc = self.assertRaises(exception.DomainRedefineFailed,
                                self._snapshot)

        self.assertIn(self.xml_path, str(exc))
        self.assertEqual([base.INSTANCE_UUID + '.xml'],
                         os.listdir(self.snapshots_dir))
        with open(self.xml_path) as f:
            self.assertEqual(self.saved_xml, f.read())
        self.driver._image_api.update.assert_not_called()
        # The domain is still transient: the record stays for recovery.
        self._assert_record_kept('copying', 'the domain is still transient')

    def test_something_already_at_the_work_dir_is_left_alone(self):
        # Planted there before the snapshot: not ours to remove.
        os.makedirs(self.work_dir)
        planted = base.make_raw(os.path.join(self.work_dir, 'theirs'), b'x')

        self.assertRaises(FileExistsError, self._snapshot)

        self.assertTrue(os.path.isfile(planted))
        self.driver._image_api.update.assert_not_called()
        self.assertEqual([], self._domain_changes())
        self.assertEqual([], os.listdir(self.journal_dir))

    def test_work_dir_that_cannot_be_removed_keeps_the_record(self):
        self.useFixture(fixtures.MockPatchObject(
            driver.shutil, 'rmtree', autospec=True))

        self._snapshot()

        self.assertTrue(os.path.isdir(self.work_dir))
        self._assert_record_kept('uploading',
                                 'could not remove %s' % self.work_dir)

    # --- the journal ------------------------------------------------------

    def _read_record(self):
        with open(self.record_path) as f:
            return json.load(f)

    def _assert_record_kept(self, phase, problem):
        self.assertEqual(phase, self._read_record()['phase'])
        self.assertIn('ERROR Snapshot %s left work to do (%s'
                      % (base.IMAGE_ID, problem), self.logs.output)
        self.assertIn('its journal record %s is kept' % self.record_path,
                      self.logs.output)
        # Kept for "nova-snapdriver-manage recover", which must not take
        # it for a snapshot still in flight: its lock is released.
        fd = journal.try_lock(self.record_path)
        self.assertIsNotNone(fd, 'the kept record is still locked')
        os.close(fd)

    def _on_first_qemu_img_create(self, check):
        execute = self.execute.side_effect

        def side_effect(*cmd, **kwargs):
            if cmd[1] == 'create':
                check()
            return execute(*cmd, **kwargs)
        self.execute.side_effect = side_effect

    def test_record_is_written_and_locked_before_the_domain_is_touched(self):
        seen = []

        def check():
            seen.append(self._read_record())
            self.assertEqual(
                0o600, stat.S_IMODE(os.stat(self.record_path).st_mode))
            self.assertEqual(
                0o700, stat.S_IMODE(os.stat(self.journal_dir).st_mode))
            self.assertEqual([], self._domain_changes())
            self.assertIsNone(journal.try_lock(self.record_path))
        self._on_first_qemu_img_create(check)

        self._snapshot()

        record, = seen
        self.assertEqual(
            {'version': 1, 'instance_uuid': base.INSTANCE_UUID,
             'instance_name': self.instance.name, 'image_id': base.IMAGE_ID,
             'disk_path': self.disk, 'disk_dev': 'vda',
             'work_dir': self.work_dir,
             'xml': self.saved_xml, 'persistent': True, 'phase': 'planned',
             'capture_method': 'rebase', 'pid': os.getpid()},
            {k: v for k, v in record.items()
             if k not in ('started_at', 'updated_at')})
        self._assert_cleaned_up()

    def _record_steps(self):
        """(step, phase and size in the record) at each step:<name>."""
        steps = []

        def listener(uuid, phase, done, total):
            if phase.startswith('step:'):
                record = self._read_record()
                steps.append((phase, record['phase'], record.get('size')))
        progress.listen(listener)
        self.addCleanup(progress.unlisten, listener)
        return steps

    def test_record_follows_each_step_and_is_removed_last(self):
        steps = self._record_steps()

        self._snapshot()

        size = len(IMAGE_DATA)
        self.assertEqual(
            [('step:overlay', 'overlay', None),
             ('step:undefined', 'undefined', None),
             ('step:copying', 'copying', None),
             ('step:extracting', 'extracting', None),
             ('step:uploading', 'uploading', size)], steps)
        self._assert_cleaned_up()
        self.assertNotIn('left work to do', self.logs.output)

    def test_cold_snapshot_records_no_xml_and_only_its_own_steps(self):
        self.domain.state = libvirt.VIR_DOMAIN_SHUTOFF
        seen = []
        self.glance.on_upload = lambda: seen.append(self._read_record())
        steps = self._record_steps()

        self._snapshot()

        self.assertEqual(['step:extracting', 'step:uploading'],
                         [s[0] for s in steps])
        self.assertIsNone(seen[0]['xml'])
        self.assertFalse(seen[0]['persistent'])
        self._assert_cleaned_up()

    def test_transient_domain_is_recorded_as_not_persistent(self):
        self.domain.persistent = False
        seen = []
        self._on_first_qemu_img_create(
            lambda: seen.append(self._read_record()))

        self._snapshot()

        self.assertFalse(seen[0]['persistent'])
        self.driver._host.write_instance_config.assert_not_called()
        self._assert_cleaned_up()

    def test_record_is_removed_after_a_failure(self):
        self.qemu_img.fail['convert'] = processutils.ProcessExecutionError(
            exit_code=1, stderr='No space left on device')
        steps = self._record_steps()

        self.assertRaises(exception.QemuImgFailed, self._snapshot)

        self.assertEqual('step:extracting', steps[-1][0])
        self._assert_cleaned_up()

    def test_domain_left_transient_keeps_the_record_and_logs(self):
        # A define that "succeeds" yet leaves the domain transient: the
        # redefine's check finds it out.  No job runs: the work dir goes.
        self.conn.mock.defineXML.side_effect = None

        exc = self.assertRaises(exception.DomainRedefineFailed,
                                self._snapshot)

        self.assertIn('still transient', str(exc))
        self.assertIsNone(self.domain.job)
        self._assert_cleaned_up_but_the_record()
        self._assert_record_kept('copying', 'the domain is still transient')
        self.assertNotIn('is kept: a job may still write into it',
                         self.logs.output)
        self.driver._image_api.update.assert_not_called()

    def _assert_cleaned_up_but_the_record(self):
        self.assertFalse(os.path.exists(self.work_dir))
        self.assertEqual(sorted([base.IMAGE_ID + '.json',
                                 base.IMAGE_ID + '.lock']),
                         sorted(os.listdir(self.journal_dir)))

    def _during_the_upload(self, change):
        """``change()`` while the image is sent, after the capture."""
        on_upload = self.glance.on_upload

        def changed():
            change()
            return on_upload()
        self.glance.on_upload = changed

    def test_domain_gone_at_the_end_removes_the_record(self):
        # Deleted while the image was sent: nothing is left to repair.
        self._during_the_upload(
            lambda: self.conn.domains.pop(base.INSTANCE_UUID))

        self._snapshot()

        self._assert_cleaned_up()

    def test_domain_that_cannot_be_checked_keeps_the_record(self):
        # libvirtd stops answering after the capture: whether a job still
        # writes into the work dir is unknown, so the work dir stays too.
        self.flags(libvirt_reconnect_timeout=3, group='snapdriver')

        def libvirtd_gone():
            self.driver._host.get_connection.side_effect = (
                base.hypervisor_unavailable())
        self._during_the_upload(libvirtd_gone)

        self._snapshot()

        self.assertEqual([(IMAGE_DATA, ['image'])], self.uploaded)
        self.assertEqual(['image'], os.listdir(self.work_dir))
        self._assert_record_kept(
            'uploading', 'cannot check the domain: libvirtd did not answer '
            'for 3 s')
        self.assertIn('%s is kept: a job may still write into it'
                      % self.work_dir, self.logs.output)
        self.assertEqual([1, 1, 1], self.clock.sleeps)

    def test_domain_whose_jobs_cannot_be_read_keeps_the_work_dir(self):
        def jobs_unreadable():
            self.domain.mock.blockJobInfo.side_effect = base.libvirt_error(
                libvirt.VIR_ERR_INTERNAL_ERROR, 'cannot acquire state')
        self._during_the_upload(jobs_unreadable)

        self._snapshot()

        self.assertTrue(os.path.isdir(self.work_dir))
        self._assert_record_kept(
            'uploading', 'cannot check the domain: cannot acquire state')

    def test_an_unexpected_error_in_the_check_still_releases_the_record(
            self):
        # An AssertionError inside nova's Host (a notifier not set up)
        # once left the record locked "in flight" for the life of
        # nova-compute: recovery skipped it and the mirror ran on.
        def host_breaks():
            self.driver._host.get_guest.side_effect = AssertionError(
                'the RPC notifier is not set up')
        self._during_the_upload(host_breaks)

        self._snapshot()

        self.assertTrue(os.path.isdir(self.work_dir))
        self._assert_record_kept(
            'uploading', 'cannot check the domain: the RPC notifier is not '
            'set up')
        self.assertIn('Checking the domain after the snapshot failed',
                      self.logs.output)

    def test_a_stream_holds_the_disk_ops_semaphore_before_its_backup(
            self):
        # Waiting for [compute] max_concurrent_disk_ops with the backup
        # running would grow its scratch file meanwhile.
        held = []

        class Semaphore(object):
            def __enter__(self):
                held.append('taken')

            def __exit__(self, *exc):
                held.append('released')
        self.useFixture(fixtures.MockPatch(
            'nova.compute.utils.disk_ops_semaphore', Semaphore()))
        self.useFixture(fixtures.MockPatchObject(
            snapshot_plan, 'capture_method', return_value='stream'))

        def fake_stream(driver, context, instance, guest, plan, step, send):
            self.assertEqual(['taken'], held)  # before anything begins
            send(io.BytesIO(IMAGE_DATA), len(IMAGE_DATA))
            self.assertEqual(['taken'], held)  # not taken twice
        self.useFixture(fixtures.MockPatchObject(
            driver.stream, 'stream', side_effect=fake_stream))

        self._snapshot()

        self.assertEqual(['taken', 'released'], held)
        self.assertEqual(IMAGE_DATA, self.uploaded[0][0])

    def test_only_rebase_journals_the_domains_secret_xml(self):
        # Only rebase undefines the domain and may redefine it from there.
        for method, has_xml in (('rebase', True), ('copy', False)):
            self.flags(capture_method=method, group='snapdriver')
            begun = self.useFixture(fixtures.MockPatchObject(
                journal, 'begin', wraps=journal.begin)).mock
            self._snapshot()
            xml = begun.call_args.kwargs['xml']
            self.assertEqual(has_xml, xml is not None, method)
            self.uploaded.clear()

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'snapshot',
                       autospec=True)
    def test_disable_libvirt_livesnapshot_is_left_to_nova(self, parent):
        # nova then suspends the guest for a cold snapshot, as operators
        # who set it expect.
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')

        self.assertIs(parent.return_value, self._snapshot())

        parent.assert_called_once_with(
            self.driver, self.context, self.instance, base.IMAGE_ID,
            self.update_task_state)
        self.assertEqual([], self._domain_changes())
        self.assertFalse(os.path.exists(self.record_path))
        self.assertIn('disable_libvirt_livesnapshot', self.logs.output)

    def _saved_guest_snapshot(self, start_fails=False):
        """disable_libvirt_livesnapshot, streamed: what happened, in order.

        The stream is a fake that reads the image out, as the upload
        would, and starts the guest at its last byte; nova's save and
        start are autospec'd.
        """
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        self.flags(capture_method='stream', group='snapdriver')
        self.cold_stream_tools()
        events = []

        def saved():
            with open(self.record_path) as f:
                return json.load(f).get('saved')
        save = self.useFixture(fixtures.MockPatchObject(
            libvirt_driver.LibvirtDriver, 'suspend', autospec=True)).mock

        def save_it(*args):
            events.append(('save', saved()))
            self.domain.state = libvirt.VIR_DOMAIN_SHUTOFF
        save.side_effect = save_it
        start = self.useFixture(fixtures.MockPatchObject(
            libvirt_driver.LibvirtDriver, '_resume_guest_after_snapshot',
            autospec=True)).mock

        def started(*args):
            events.append(('start', saved()))
            if not start_fails:
                self.domain.state = libvirt.VIR_DOMAIN_PAUSED
            else:
                raise base.libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED,
                                         'Failed to get "write" lock')
        start.side_effect = started

        def stream_disk(instance, plan, step, upload, read_done=None):
            events.append(('read', saved()))
            read_done()
            events.append(('upload ends', saved()))
        self.useFixture(fixtures.MockPatchObject(
            coldstream, 'stream_disk', side_effect=stream_disk))
        self.domain.state = libvirt.VIR_DOMAIN_PAUSED
        return events, start

    def test_a_saved_guest_is_streamed_and_started_at_the_last_byte(self):
        events, start = self._saved_guest_snapshot()

        self.assertIsNone(self._snapshot())

        self.assertEqual([('save', True), ('read', True), ('start', True),
                          ('upload ends', False)], events)
        # Paused before: nova's start is told so.
        start.assert_called_once_with(
            self.driver, self.context, False, libvirt.VIR_DOMAIN_PAUSED,
            self.instance, mock.ANY)
        self.assertEqual([], self._domain_changes())
        self._assert_task_states()
        self._assert_cleaned_up()

    def test_a_saved_guest_that_does_not_start_keeps_its_record(self):
        events, start = self._saved_guest_snapshot(start_fails=True)

        error = self.assertRaises(exception.GuestNotRestored,
                                  self._snapshot)

        self.assertIn('Failed to get "write" lock', str(error))
        self.assertEqual(2, start.call_count)  # at the last byte, at the end
        with open(self.record_path) as f:
            record = json.load(f)
        self.assertTrue(record['saved'])
        self.assertIn('the guest is still saved (managed save)',
                      self.logs.output)
        # Released for recovery: not "in flight".
        self.assertFalse(journal.held(self.record_path))

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'snapshot',
                       autospec=True)
    def test_ephemeral_storage_encryption_is_left_to_nova(self, parent):
        self.flags(enabled=True, group='ephemeral_storage_encryption')

        self.assertIs(parent.return_value, self._snapshot())

        parent.assert_called_once()
        self.assertEqual([], self._domain_changes())

    def test_job_still_running_keeps_the_record_and_the_work_dir(self):
        # copy: the abort fails, here and on the domain looked up again;
        # the mirror still writes into the overlay.
        self.flags(capture_method='copy', group='snapdriver')
        error = base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                                   'abort broke')
        self.domain.mock.blockJobAbort.side_effect = error

        raised = self.assertRaises(libvirt.libvirtError, self._snapshot)

        self.assertIs(error, raised)
        self.assertIsNotNone(self.domain.job)
        self.assertEqual(['overlay.qcow2'], os.listdir(self.work_dir))
        self._assert_record_kept('copying',
                                 'a block job still runs on vda')
        self.assertIn('%s is kept: a job may still write into it'
                      % self.work_dir, self.logs.output)
        self.driver._image_api.update.assert_not_called()

    def test_backup_still_running_keeps_the_record_and_the_work_dir(self):
        self.flags(capture_method='backup', group='snapdriver')
        # An abort libvirt takes, yet the backup runs on.
        self.domain.mock.jobStats.return_value = {
            'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
            'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
        self.useFixture(fixtures.MockPatchObject(
            driver.capture.blockjob, 'wait_for_backup', autospec=True,
            side_effect=exception.BackupTimeout(
                disk='vda', instance_uuid=base.INSTANCE_UUID, timeout=1800,
                percent=50)))

        self.assertRaises(exception.BackupTimeout, self._snapshot)

        self.domain.mock.abortJob.assert_called_with()
        self.assertTrue(os.path.isdir(self.work_dir))
        self._assert_record_kept('backup', 'a backup job still runs')

    def test_lost_connection_repaired_on_a_fresh_lookup_cleans_up(self):
        # libvirtd restarts during the wait; the job is aborted and the
        # domain redefined through the new connection: nothing is left.
        def job_info(disk, flags=0):
            self.domain.restart_libvirtd()
            raise base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                                     'client socket is closed')
        self.domain.mock.blockJobInfo.side_effect = job_info

        exc = self.assertRaises(exception.LibvirtConnectionLost,
                                self._snapshot)

        self.assertIn('Retry the snapshot.', str(exc))
        self.domain.mock.blockJobAbort.assert_called_once_with('vda', flags=0)
        self.assertIsNone(self.domain.job)
        self.assertTrue(self.domain.persistent)
        self._assert_cleaned_up()
        self.assertNotIn('left work to do', self.logs.output)

    # --- recovery before each snapshot -----------------------------------

    def _stale_record(self):
        """A record some earlier snapshot of another image left."""
        os.makedirs(self.journal_dir, mode=0o700)
        journal.write_atomically(
            os.path.join(self.journal_dir, 'stale.json'), '{}')

    def _patch_recover(self, **kwargs):
        return self.useFixture(fixtures.MockPatchObject(
            driver.recovery, 'recover', autospec=True, **kwargs)).mock

    def test_recovery_runs_before_the_snapshot_plans(self):
        self._stale_record()
        seen = []
        recover = self._patch_recover(
            side_effect=lambda *a: seen.append(
                (list(self.qemu_img.commands), self._domain_changes())) or [
                    {'record': 'r.json', 'state': 'recovered'}])

        self._snapshot()

        recover.assert_called_once_with(self.conn.mock,
                                        self.driver._image_api, mock.ANY)
        self.assertEqual([([], [])], seen)
        self.assertIn('Looked at 1 interrupted snapshot(s) (before a '
                      'snapshot): recovered', self.logs.output)
        self.assertEqual([(IMAGE_DATA, ['image'])], self.uploaded)

    def test_recovery_failing_before_a_snapshot_does_not_stop_it(self):
        self._stale_record()
        self._patch_recover(side_effect=RuntimeError('bug in recovery'))

        self.assertIsNone(self._snapshot())

        self.assertIn('Recovering interrupted snapshots (before a snapshot) '
                      'failed', self.logs.output)
        self.assertEqual([(IMAGE_DATA, ['image'])], self.uploaded)

    def test_no_recovery_before_a_snapshot_with_an_empty_journal(self):
        recover = self._patch_recover()

        self._snapshot()

        recover.assert_not_called()
        self._assert_cleaned_up()

    def test_journal_that_cannot_be_written_fails_before_anything(self):
        with open(self.journal_dir, 'w') as f:
            f.write('a file where the journal directory should be')

        self.assertRaises(OSError, self._snapshot)

        self.assertEqual([], self._domain_changes())
        # Nothing was created: no overlay, no image.
        self.assertEqual([], [cmd for cmd in self.qemu_img.commands
                              if cmd[1] not in ('info', 'measure')])
        self.assertFalse(os.path.exists(self.work_dir))
        self.driver._image_api.update.assert_not_called()


class InitHostTestCase(base.TestCase):
    """init_host(): nova's, then the repair of interrupted snapshots."""

    def setUp(self):
        super(InitHostTestCase, self).setUp()
        self.driver = self.make_driver()
        self.domain = base.FakeDomain(base.file_disk_xml(DISK),
                                      persistent=False)
        self.conn = base.FakeConnection(self.domain)
        self.driver._host.get_connection.return_value = self.conn.mock
        self.parent = self.useFixture(fixtures.MockPatchObject(
            libvirt_driver.LibvirtDriver, 'init_host', autospec=True)).mock
        # No periodic thread unless a test asks for one.
        self.flags(recovery_interval=0, group='snapdriver')
        self.record_path = os.path.join(self.journal_dir,
                                        base.IMAGE_ID + '.json')
        self.saved_xml = self.domain.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def _write_dead_record(self):
        os.makedirs(self.journal_dir, mode=0o700)
        journal.write_atomically(self.record_path, json.dumps({
            'version': 1, 'instance_uuid': base.INSTANCE_UUID,
            'instance_name': 'instance-00000001', 'image_id': base.IMAGE_ID,
            'disk_path': DISK, 'disk_dev': 'vda',
            'work_dir': os.path.join(self.snapshots_dir, base.IMAGE_ID),
            'xml': self.saved_xml, 'persistent': True,
            'phase': 'copying'}))

    def test_nova_starts_first_then_the_dead_snapshot_is_repaired(self):
        self._write_dead_record()
        order = []
        self.parent.side_effect = lambda *a: order.append(
            ('nova init_host', os.path.exists(self.record_path)))
        define = self.conn.mock.defineXML.side_effect
        self.conn.mock.defineXML.side_effect = lambda xml: (
            order.append(('defineXML', xml)), define(xml))[1]

        self.assertIsNone(self.driver.init_host('compute1'))

        self.parent.assert_called_once_with(self.driver, 'compute1')
        self.assertEqual([('nova init_host', True),
                          ('defineXML', self.saved_xml)], order)
        self.assertFalse(os.path.exists(self.record_path))
        self.driver._image_api.get.assert_called_once_with(
            mock.ANY, base.IMAGE_ID)
        self.assertIn('Looked at 1 interrupted snapshot(s) (start-up): '
                      'recovered',
                      self.logs.output)

    def test_nothing_to_repair_logs_nothing(self):
        self.driver.init_host('compute1')

        self.parent.assert_called_once_with(self.driver, 'compute1')
        self.conn.mock.lookupByUUIDString.assert_not_called()
        self.assertNotIn('interrupted snapshot', self.logs.output)

    def test_recovery_failing_is_logged_and_never_raised(self):
        self._write_dead_record()
        self.driver._host.get_connection.side_effect = (
            base.libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, 'no libvirt'))

        self.assertIsNone(self.driver.init_host('compute1'))

        self.assertIn('Recovering interrupted snapshots (start-up) failed; '
                      'run "nova-snapdriver-manage recover" to retry',
                      self.logs.output)
        self.assertIn('no libvirt', self.logs.output)
        self.assertTrue(os.path.exists(self.record_path))

    def test_unexpected_recovery_error_is_swallowed(self):
        self._write_dead_record()
        recover = self.useFixture(fixtures.MockPatchObject(
            driver.recovery, 'recover', autospec=True,
            side_effect=RuntimeError('bug in recovery'))).mock

        self.assertIsNone(self.driver.init_host('compute1'))

        recover.assert_called_once_with(self.conn.mock,
                                        self.driver._image_api, mock.ANY)
        self.assertIn('Recovering interrupted snapshots (start-up) failed',
                      self.logs.output)
        self.assertIn('RuntimeError: bug in recovery', self.logs.output)

    def test_nova_init_host_failing_is_not_swallowed(self):
        self._write_dead_record()
        self.parent.side_effect = RuntimeError('libvirt too old')

        self.assertRaises(RuntimeError, self.driver.init_host, 'compute1')

        self.conn.mock.defineXML.assert_not_called()
        self.assertTrue(os.path.exists(self.record_path))

    def test_start_up_recovers_with_an_empty_journal_too(self):
        # Files of no record (saved XML, journal temp files) are cleaned.
        recover = self.useFixture(fixtures.MockPatchObject(
            driver.recovery, 'recover', autospec=True,
            return_value=[{'record': None, 'file': 'x.xml',
                           'state': 'deleted'}])).mock

        self.driver.init_host('compute1')

        recover.assert_called_once()
        # A file of no record is not an interrupted snapshot.
        self.assertNotIn('interrupted snapshot(s)', self.logs.output)

    def test_snapshots_in_flight_are_not_logged(self):
        self._write_dead_record()
        self.useFixture(fixtures.MockPatchObject(
            driver.recovery, 'recover', autospec=True,
            return_value=[{'state': 'in flight'}]))

        self.driver.init_host('compute1')

        self.assertNotIn('interrupted snapshot', self.logs.output)

    def test_unreadable_journal_never_fails_the_start(self):
        # A journal_path that is not a directory (or not readable) must not
        # keep nova-compute from starting, nor kill the periodic recovery.
        with open(self.journal_dir, 'w') as f:
            f.write('a file where the journal directory should be')

        self.assertIsNone(self.driver.init_host('compute1'))

    # --- the periodic recovery ----------------------------------------------

    def _threads(self):
        return [t for t in threading.enumerate()
                if t.name == 'snapdriver-recovery']

    def test_periodic_thread_starts_and_stops_with_the_host(self):
        self.flags(recovery_interval=300, group='snapdriver')
        before = self._threads()

        self.driver.init_host('compute1')
        thread, = [t for t in self._threads() if t not in before]
        self.addCleanup(self.driver._stop_recovery.set)
        self.assertTrue(thread.daemon)
        self.assertTrue(thread.is_alive())

        self.driver.cleanup_host('compute1')

        thread.join(5)
        self.assertFalse(thread.is_alive())
        if hasattr(libvirt_host.Host, 'cleanup'):  # nova 33 and later
            self.driver._host.cleanup.assert_called_once_with()

    def test_no_periodic_thread_with_a_zero_interval(self):
        before = self._threads()

        self.driver.init_host('compute1')

        self.assertEqual(before, self._threads())
        # Stopping a host without a thread is fine.
        self.driver.cleanup_host('compute1')

    def _periodic(self, runs, **recover):
        """_recover_periodically, the stop event set after ``runs``."""
        self._write_dead_record()
        rec = self.useFixture(fixtures.MockPatchObject(
            driver.recovery, 'recover', autospec=True, **recover)).mock
        stop = mock.Mock(spec=threading.Event)
        stop.wait.side_effect = [False] * runs + [True]
        self.driver._stop_recovery = stop
        self.driver._recover_periodically(42)
        self.assertEqual([mock.call(42)] * (runs + 1),
                         stop.wait.call_args_list)
        return rec

    def test_periodic_recovery_runs_every_interval_until_stopped(self):
        recover = self._periodic(2, return_value=[
            {'record': 'r.json', 'state': 'recovered'}])

        self.assertEqual(2, recover.call_count)
        self.assertEqual(2, self.logs.output.count(
            'Looked at 1 interrupted snapshot(s) (periodic): recovered'))

    def test_periodic_recovery_failing_keeps_running(self):
        recover = self._periodic(3, side_effect=RuntimeError('bug'))

        self.assertEqual(3, recover.call_count)
        self.assertEqual(3, self.logs.output.count(
            'Recovering interrupted snapshots (periodic) failed'))

    def test_stop_already_set_never_recovers(self):
        recover = self._periodic(0)

        recover.assert_not_called()
