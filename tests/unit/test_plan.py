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

"""plan: what is snapshotted, into what, and whether it fits, read-only."""

import os
from unittest import mock

import fixtures
import libvirt

from nova.compute import power_state
from nova import exception as nova_exception
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import guest as libvirt_guest

from nova_snapdriver import chain
from nova_snapdriver import exception
from nova_snapdriver import plan as snapshot_plan
from tests.unit import base

DISK = '/var/lib/nova/instances/%s/disk' % base.INSTANCE_UUID
NODE = chain.Node(DISK, 'qcow2',
                  chain.Node('/var/lib/nova/instances/_base/base', 'raw'))
MiB = 1024 * 1024
GiB = 1024 * MiB


class OutputFormatTestCase(base.TestCase):

    def _output_format(self, source_format, override=None):
        self.flags(snapshot_image_format=override, group='libvirt')
        return snapshot_plan.output_format(source_format)

    def test_without_override_the_source_format_is_kept(self):
        self.assertEqual('qcow2', self._output_format('qcow2'))
        self.assertEqual('raw', self._output_format('raw'))

    def test_snapshot_image_format_overrides_the_source_format(self):
        self.assertEqual('raw', self._output_format('qcow2', 'raw'))
        self.assertEqual('qcow2', self._output_format('raw', 'qcow2'))

    def test_lvm_and_rbd_sources_become_raw(self):
        self.assertEqual('raw', self._output_format('lvm'))
        self.assertEqual('raw', self._output_format('rbd'))


class RootDiskTestCase(base.TestCase):

    def _root_disk(self, disk_xml, virt_type='kvm'):
        self.flags(virt_type=virt_type, group='libvirt')
        self.domain = base.FakeDomain(disk_xml, virt_type=virt_type)
        return snapshot_plan.root_disk(self.make_guest(self.domain))

    def _test_not_handled(self, disk_xml, message, virt_type='kvm'):
        exc = self.assertRaises(snapshot_plan.NotHandled, self._root_disk,
                                disk_xml, virt_type)
        self.assertEqual(message, str(exc))
        # Reading the domain is all that may have happened.
        for name, _args, _kwargs in self.domain.mock.method_calls:
            self.assertEqual('XMLDesc', name)

    def test_file_qcow2_disk_is_handled(self):
        self.assertEqual((base.DISK_DEV, DISK, 'qcow2'),
                         self._root_disk(base.file_disk_xml(DISK)))

    def test_file_raw_disk_is_handled(self):
        self.assertEqual(('sda', DISK, 'raw'), self._root_disk(
            base.file_disk_xml(DISK, fmt='raw', dev='sda')))

    def test_rbd_disk_is_not_handled(self):
        self._test_not_handled(
            "<disk type='network' device='disk'>"
            "<driver name='qemu' type='raw'/>"
            "<source protocol='rbd' name='vms/%s_disk'/>"
            "<target dev='vda' bus='virtio'/>%%(mirror)s</disk>"
            % base.INSTANCE_UUID,
            'rbd disk rbd:vms/%s_disk' % base.INSTANCE_UUID)

    def test_lvm_disk_is_not_handled(self):
        self._test_not_handled(
            "<disk type='block' device='disk'>"
            "<driver name='qemu' type='raw'/>"
            "<source dev='/dev/nova-vg/%s_disk'/>"
            "<target dev='vda' bus='virtio'/>%%(mirror)s</disk>"
            % base.INSTANCE_UUID,
            'lvm disk /dev/nova-vg/%s_disk' % base.INSTANCE_UUID)

    def test_ploop_disk_is_not_handled(self):
        ploop = os.path.join(self.tmp, 'root.hds')
        os.makedirs(ploop)
        open(os.path.join(ploop, 'DiskDescriptor.xml'), 'w').close()

        self._test_not_handled(base.file_disk_xml(ploop, fmt='ploop'),
                               'ploop disk %s' % ploop)

    def test_block_disk_outside_dev_is_not_handled_as_non_file(self):
        self._test_not_handled(
            "<disk type='block' device='disk'>"
            "<driver name='qemu' type='raw'/>"
            "<source dev='/srv/volumes/root'/>"
            "<target dev='vda' bus='virtio'/>%(mirror)s</disk>",
            'non-file disk /srv/volumes/root')

    def test_disk_the_live_config_does_not_call_a_file_is_not_handled(self):
        # find_disk() read a file disk, the live disk lookup does not.
        self.domain = base.FakeDomain(base.file_disk_xml(DISK))
        guest = base.autospec(libvirt_guest.Guest)
        guest.get_config.return_value = self.make_guest(
            self.domain).get_config()
        guest.get_disk.return_value = vconfig.LibvirtConfigGuestDisk()
        guest.get_disk.return_value.source_type = 'block'

        exc = self.assertRaises(snapshot_plan.NotHandled,
                                snapshot_plan.root_disk, guest)

        self.assertEqual('non-file disk %s' % DISK, str(exc))
        guest.get_disk.assert_called_once_with(DISK)

    def test_other_file_format_is_not_handled(self):
        self._test_not_handled(base.file_disk_xml(DISK, fmt='vmdk'),
                               'vmdk disk %s' % DISK)

    def _test_virt_type_not_handled(self, virt_type):
        self._test_not_handled(base.file_disk_xml(DISK),
                               'virt_type %s' % virt_type, virt_type)
        self.domain.mock.XMLDesc.assert_not_called()

    def test_lxc_is_not_handled(self):
        self._test_virt_type_not_handled('lxc')

    def test_parallels_is_not_handled(self):
        self._test_virt_type_not_handled('parallels')


class QuiesceWantedTestCase(base.TestCase):
    """Against the real driver's _requires_quiesce/_can_quiesce."""

    def _quiesce_wanted(self, **image_props):
        instance = self.make_instance(**image_props)
        return snapshot_plan.quiesce_wanted(self.make_driver(), instance,
                                            instance.image_meta)

    def test_possible_and_not_required_tries_without_requiring(self):
        self.assertEqual((True, False),
                         self._quiesce_wanted(hw_qemu_guest_agent='yes'))

    def test_possible_and_required_tries_and_requires(self):
        self.assertEqual((True, True), self._quiesce_wanted(
            hw_qemu_guest_agent='yes', os_require_quiesce='yes'))

    def test_impossible_and_not_required_does_not_try(self):
        self.assertEqual((False, False), self._quiesce_wanted())
        self.assertNotIn('ERROR', self.logs.output)

    def test_impossible_and_required_raises_before_anything(self):
        self.assertRaises(nova_exception.QemuGuestAgentNotEnabled,
                          self._quiesce_wanted, os_require_quiesce='yes')
        self.assertIn('ERROR Image property os_require_quiesce is set but '
                      'the instance cannot be quiesced', self.logs.output)

    def _with_agent(self, answers, **image_props):
        instance = self.make_instance(hw_qemu_guest_agent='yes',
                                      **image_props)
        guest = mock.Mock(spec=['_domain'])
        guest._domain = base.autospec(libvirt.virDomain)
        if not answers:
            guest._domain.getTime.side_effect = base.libvirt_error(
                libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                'Guest agent is not responding')
        result = snapshot_plan.quiesce_wanted(
            self.make_driver(), instance, instance.image_meta, guest)
        return result, guest._domain.getTime

    def test_required_with_an_answering_agent_tries_and_requires(self):
        result, asked = self._with_agent(True, os_require_quiesce='yes')
        self.assertEqual((True, True), result)
        asked.assert_called_once_with()

    def test_required_with_a_silent_agent_raises_before_anything(self):
        exc = self.assertRaises(nova_exception.InstanceQuiesceFailed,
                                self._with_agent, False,
                                os_require_quiesce='yes')
        self.assertIn('qemu-guest-agent) in the guest does not answer',
                      str(exc))
        self.assertIn('not responding', str(exc))

    def test_not_required_does_not_ask_the_agent(self):
        # The freeze itself finds out, and is skipped if it fails.
        result, asked = self._with_agent(False)
        self.assertEqual((True, False), result)
        asked.assert_not_called()

    def test_unsupported_virt_type_and_required_raises(self):
        self.flags(virt_type='parallels', group='libvirt')

        self.assertRaises(nova_exception.InstanceQuiesceNotSupported,
                          self._quiesce_wanted, hw_qemu_guest_agent='yes',
                          os_require_quiesce='yes')


class SpaceTestCase(base.TestCase):

    def setUp(self):
        super(SpaceTestCase, self).setUp()
        self.qemu_img, self.execute = self.patch_execute()
        self.statvfs = self.useFixture(fixtures.MockPatchObject(
            snapshot_plan.os, 'statvfs', autospec=True)).mock

    def _space_needed(self, live, disk_info, method='rebase',
                      compress=False):
        self.qemu_img.required = 1000
        return snapshot_plan.space_needed(live, NODE, disk_info, 'raw',
                                          method, compress)

    def test_cold_raw_needs_the_chains_data_not_its_virtual_size(self):
        # measure -O raw says the virtual size, but convert writes a
        # sparse raw file: -O qcow2 measures the data it holds.
        self.assertEqual(1000, self._space_needed(False,
                                                  {'actual-size': 500}))
        self.assertEqual(
            [['qemu-img', 'measure', '-U', '-O', 'qcow2', '--output=json',
              NODE.filename()]], self.qemu_img.commands)

    def test_cold_qcow2_needs_what_qemu_img_measure_requires(self):
        self.qemu_img.required = 1234
        self.assertEqual(1234, snapshot_plan.space_needed(
            False, NODE, {'actual-size': 500}, 'qcow2'))
        self.assertEqual(
            [['qemu-img', 'measure', '-U', '-O', 'qcow2', '--output=json',
              NODE.filename()]], self.qemu_img.commands)

    def test_a_raw_backup_written_as_the_image_needs_the_virtual_size(self):
        # QEMU's push backup writes every block of a raw target.
        self.assertEqual(10 ** 12, self._space_needed(
            True, {'actual-size': 500, 'virtual-size': 10 ** 12},
            method='backup'))
        self.assertEqual([], self.qemu_img.commands)

    def test_formats_qemu_img_cannot_measure_count_the_virtual_size(self):
        # vmdk, vdi: written by convert, never measured (qemu-img measure
        # refuses them); the virtual size and a margin bound either.
        for fmt in ('vmdk', 'vdi'):
            self.assertEqual(
                GiB + GiB // 64 + 16 * MiB,
                snapshot_plan.space_needed(
                    False, NODE, {'virtual-size': GiB}, fmt))
        self.assertEqual([], self.qemu_img.commands)

    def test_a_vmdk_backup_is_a_qcow2_converted_not_a_single_copy(self):
        self.qemu_img.required = 1000
        self.assertEqual(
            GiB + GiB // 64 + 16 * MiB + 1000,
            snapshot_plan.space_needed(
                True, NODE, {'virtual-size': GiB}, 'vmdk', 'backup'))
        plan = snapshot_plan.SnapshotPlan(
            image_id='i', image_name='n', live=True, power_state=1,
            disk_dev='vda', disk_path='/d', disk_format='qcow2', chain=NODE,
            virtual_size=GiB, image_format='vmdk', compress=False,
            quiesce=False, require_quiesce=False, work_dir='/w',
            space_needed=0, capture_method='backup')
        self.assertFalse(plan.single_copy)
        self.assertEqual('qcow2', plan.backup_format)

    def test_stream_scratch_is_bounded_by_the_chains_data_or_the_cap(self):
        # Copy-before-write copies clusters of the base too: the whole
        # chain's data, not the top image's actual size, is its worst case.
        self.flags(stream_scratch_max_mb=0, group='snapdriver')
        self.assertEqual(1000, self._space_needed(
            True, {'actual-size': 1}, method='stream'))
        self.assertEqual('qcow2', self.qemu_img.commands[0][4])
        self.qemu_img.required = 10 * MiB
        self.flags(stream_scratch_max_mb=2, group='snapdriver')
        self.assertEqual(2 * MiB, snapshot_plan.space_needed(
            True, NODE, {'actual-size': 1}, 'raw', 'stream'))

    def test_compressed_backup_measures_the_whole_chain_twice(self):
        self.assertEqual(2000, self._space_needed(
            True, {'actual-size': 500}, method='backup', compress=True))
        self.assertEqual(
            ['qemu-img', 'measure', '-U', '-O', 'qcow2', '--output=json',
             NODE.filename()], self.qemu_img.commands[1])

    def test_live_adds_the_allocated_size_of_the_disk_for_the_overlay(self):
        self.assertEqual(1500, self._space_needed(True, {'actual-size': 500}))

    def test_live_without_allocated_size_adds_nothing(self):
        self.assertEqual(1000, self._space_needed(True, {}))

    def _check_space(self, needed, free_blocks, reserved_mb, frsize=4096):
        self.flags(reserved_space_mb=reserved_mb, group='snapdriver')
        self.statvfs.return_value = os.statvfs_result(
            (8192, frsize, 10 ** 9, free_blocks + 7, free_blocks,
             1000, 1000, 1000, 0, 255))
        result = snapshot_plan.check_space(mock.sentinel.directory, needed)
        self.statvfs.assert_called_once_with(mock.sentinel.directory)
        return result

    def test_enough_space_returns_what_is_free_to_non_root(self):
        # f_bavail (not f_bfree) times f_frsize (not f_bsize).
        self.assertEqual(1000 * 4096, self._check_space(
            needed=1000 * 4096 - 2 * MiB, free_blocks=1000, reserved_mb=2))

    def test_exactly_enough_space_with_the_reserve_is_enough(self):
        self._check_space(needed=10 * MiB - MiB, free_blocks=10 * 256,
                          reserved_mb=1)

    def test_not_enough_space_names_directory_needed_and_free(self):
        self.flags(reserved_space_mb=256, group='snapdriver')
        self.statvfs.return_value = os.statvfs_result(
            (4096, 4096, 10 ** 6, 2 ** 18, 2 ** 17, 0, 0, 0, 0, 255))

        exc = self.assertRaises(exception.InsufficientSnapshotSpace,
                                snapshot_plan.check_space, '/srv/snaps',
                                768 * MiB)

        self.assertEqual(
            'Not enough free space in the snapshots directory /srv/snaps: '
            'the snapshot needs 1073741824 bytes (1.0 GiB, including a '
            'reserve of 268435456 bytes) but only 536870912 bytes '
            '(512.0 MiB) are free. Free some space there, or point '
            '[libvirt] snapshots_directory at a larger filesystem. The '
            'instance was not touched. (nova-snapdriver '
            'InsufficientSnapshotSpace: see Troubleshooting in its '
            'documentation)', str(exc))

    def test_the_reserve_alone_can_make_space_insufficient(self):
        exc = self.assertRaises(
            exception.InsufficientSnapshotSpace, self._check_space,
            needed=4096, free_blocks=256, reserved_mb=1)

        self.assertEqual(4096 + MiB, exc.kwargs['needed'])
        self.assertEqual(MiB, exc.kwargs['reserve'])
        self.assertEqual(MiB, exc.kwargs['free'])

    def test_no_reserve_counts_only_what_is_needed(self):
        self.assertEqual(MiB, self._check_space(needed=MiB, free_blocks=256,
                                                reserved_mb=0))


class WorkDirNameTestCase(base.TestCase):

    def test_names_its_image_and_cannot_be_guessed(self):
        names = {snapshot_plan.work_dir_name(self.snapshots_dir,
                                             base.IMAGE_ID)
                 for _ in range(100)}

        self.assertEqual(100, len(names))
        for name in names:
            self.assertEqual(self.snapshots_dir, os.path.dirname(name))
            self.assertRegex(os.path.basename(name),
                             r'^c0ffee00\.[0-9a-f]{12}$')

    def test_leaves_the_nbd_socket_more_room_than_the_image_id(self):
        # The work dir used to be <snapshots_directory>/<image id>.
        name = snapshot_plan.work_dir_name(self.snapshots_dir,
                                           base.IMAGE_ID)

        self.assertLess(len(name), len(os.path.join(self.snapshots_dir,
                                                    base.IMAGE_ID)))


class BuildTestCase(base.TestCase):
    """build() against the real driver, a FakeDomain and a fake qemu-img."""

    def setUp(self):
        super(BuildTestCase, self).setUp()
        # nova's sequence unless a test names another (auto is the default).
        self.flags(reserved_space_mb=0, capture_method='rebase',
                   group='snapdriver')
        self.qemu_img, self.execute = self.patch_execute()
        self.qemu_img.required = 3 * MiB
        self.work_dir = self.fix_work_dir()
        # What the header says is never what the plan reads.
        self.qemu_img.disk_info = {
            'virtual-size': base.DISK_SIZE, 'actual-size': 2 * MiB,
            'format': 'qcow2', 'backing-filename': 'elsewhere',
            'full-backing-filename': '/elsewhere',
            'backing-filename-format': 'qcow2'}
        self.disk, self.base = self.make_disk()
        self.driver = self.make_driver()
        self.driver._image_api.get.return_value = {'name': 'my snap'}

    def _build(self, state=libvirt.VIR_DOMAIN_RUNNING, **image_props):
        self.domain = base.FakeDomain(base.file_disk_xml(self.disk),
                                      state=state)
        self.instance = self.make_instance(**image_props)
        return snapshot_plan.build(self.driver, self.context, self.instance,
                                   base.IMAGE_ID,
                                   self.make_guest(self.domain))

    def test_running_domain_plans_a_live_snapshot(self):
        self.flags(snapshot_compression=True, group='libvirt')

        plan = self._build(hw_qemu_guest_agent='yes')

        self.assertEqual(snapshot_plan.SnapshotPlan(
            image_id=base.IMAGE_ID, image_name='my snap', live=True,
            power_state=1, disk_dev='vda', disk_path=self.disk,
            disk_format='qcow2',
            chain=chain.Node(self.disk, 'qcow2',
                             chain.Node(self.base, 'raw')),
            virtual_size=base.DISK_SIZE,
            image_format='qcow2', compress=True, quiesce=True,
            require_quiesce=False, work_dir=self.work_dir,
            space_needed=5 * MiB), plan)
        self.driver._image_api.get.assert_called_once_with(
            self.context, base.IMAGE_ID)
        self.assertTrue(os.path.isdir(self.snapshots_dir))
        self.assertFalse(os.path.exists(plan.work_dir))
        self.assertEqual(os.path.join(plan.work_dir, 'overlay.qcow2'),
                         plan.overlay_path)
        self.assertEqual(os.path.join(plan.work_dir, 'image'),
                         plan.image_path)
        self.assertEqual((self.base, 'raw'),
                         (plan.backing_file, plan.backing_format))
        # qemu-img read the checked chain, named in full.
        self.assertEqual(
            [['qemu-img', 'info', '-U', '--output=json',
              plan.chain.top().filename()],
             ['qemu-img', 'measure', '-U', '-O', 'qcow2', '--output=json',
              plan.chain.filename()]], self.qemu_img.commands)

    def test_the_upload_hashes_as_glance_hashed_the_booted_image(self):
        booted = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
        images = {base.IMAGE_ID: {'name': 'my snap', 'status': 'queued'},
                  booted: base.glance_image(b'os', os_hash_algo='sha256')}
        self.driver._image_api.get.side_effect = (
            lambda context, image_id: images[image_id])
        self.domain = base.FakeDomain(base.file_disk_xml(self.disk))
        self.instance = self.make_instance()
        self.instance.image_ref = booted

        plan = snapshot_plan.build(self.driver, self.context, self.instance,
                                   base.IMAGE_ID,
                                   self.make_guest(self.domain))

        self.assertEqual(('sha256',), plan.hashes)
        self.assertIn('image hashed with sha256: needs', self.logs.output)

    def test_the_log_says_when_the_upload_is_not_hashed(self):
        self.flags(verify_upload_hash=False, group='snapdriver')
        self.domain = base.FakeDomain(base.file_disk_xml(self.disk))

        plan = snapshot_plan.build(self.driver, self.context,
                                   self.make_instance(), base.IMAGE_ID,
                                   self.make_guest(self.domain))

        self.assertEqual((), plan.hashes)
        self.assertIn('image not hashed (verify_upload_hash is off): needs',
                      self.logs.output)

    def test_every_domain_not_shut_down_is_live_like_nova(self):
        # nova's in-tree snapshot() is live unless the power state is
        # SHUTDOWN; a cold read of a disk QEMU holds fails on its lock.
        states = {
            'running': libvirt.VIR_DOMAIN_RUNNING,
            'blocked': libvirt.VIR_DOMAIN_BLOCKED,
            'paused': libvirt.VIR_DOMAIN_PAUSED,
            'pmsuspended': libvirt.VIR_DOMAIN_PMSUSPENDED,
            'crashed': libvirt.VIR_DOMAIN_CRASHED,
            'nostate': libvirt.VIR_DOMAIN_NOSTATE,
            'shutting-down': libvirt.VIR_DOMAIN_SHUTDOWN,
            'shut-off': libvirt.VIR_DOMAIN_SHUTOFF,
        }

        live = {name: self._build(state=state).live
                for name, state in states.items()}

        self.assertEqual(
            {'running': True, 'blocked': True, 'paused': True,
             'pmsuspended': True, 'crashed': True, 'nostate': True,
             'shutting-down': False, 'shut-off': False}, live)

    def test_shut_off_domain_plans_a_cold_snapshot_without_quiesce(self):
        plan = self._build(state=libvirt.VIR_DOMAIN_SHUTOFF,
                           os_require_quiesce='yes')

        self.assertFalse(plan.live)
        self.assertEqual((False, False), (plan.quiesce, plan.require_quiesce))
        self.assertEqual(3 * MiB, plan.space_needed)

    def test_unbacked_disk_has_no_backing_format(self):
        self.disk, _base = self.make_disk(backing_fmt=None)

        plan = self._build()

        self.assertEqual((None, None), (plan.backing_file,
                                        plan.backing_format))
        self.assertEqual(chain.Node(self.disk, 'qcow2'), plan.chain)

    def test_raw_disk_is_planned_as_raw(self):
        self.disk, _base = self.make_disk(fmt='raw')
        self.domain = base.FakeDomain(base.file_disk_xml(self.disk, 'raw'))

        plan = snapshot_plan.build(self.driver, self.context,
                                   self.make_instance(), base.IMAGE_ID,
                                   self.make_guest(self.domain))

        self.assertEqual(chain.Node(self.disk, 'raw'), plan.chain)
        self.assertEqual('raw', plan.image_format)

    def test_header_without_backing_format_takes_it_from_the_base(self):
        # Disks nova made before it passed backing_fmt.
        os.unlink(self.disk)
        base.make_image(self.disk, backing=self.base, backing_fmt='raw',
                        options='compat=0.10')
        with open(self.disk, 'r+b') as f:
            f.seek(72)  # the first extension, the backing format, ends it
            f.write(b'\0\0\0\0')

        plan = self._build()

        self.assertEqual((self.base, 'raw'),
                         (plan.backing_file, plan.backing_format))
        self.assertIn('backed by raw %s' % self.base, self.logs.output)

    def test_planted_header_is_never_followed(self):
        # A guest that escaped into QEMU rewrote its disk's header to name
        # a file of the host.
        secret = base.make_raw(os.path.join(self.tmp, 'etc', 'shadow'),
                               b'root:$6$')
        os.unlink(self.disk)
        base.make_image(self.disk, backing=secret, backing_fmt='raw')

        exc = self.assertRaises(exception.UnsafeDiskChain, self._build)

        self.assertIn('Refusing to read %s for the snapshot: its backing '
                      "file %s is not a file in nova's image cache"
                      % (self.disk, secret), str(exc))
        # No qemu-img ran at all, nothing was staged, the domain was only
        # read.
        self.execute.assert_not_called()
        self.assertFalse(os.path.exists(self.snapshots_dir))
        self.assertEqual({'XMLDesc', 'info', 'ID'},
                         {c[0] for c in self.domain.mock.method_calls})

    def test_planted_data_file_is_never_followed(self):
        os.unlink(self.disk)
        base.make_image(self.disk, options='data_file=%s' % os.path.join(
            self.tmp, 'data'))

        exc = self.assertRaises(exception.UnsafeDiskChain, self._build)

        self.assertIn('its header names an external data file', str(exc))
        self.execute.assert_not_called()

    def test_raw_output_is_never_compressed(self):
        self.flags(snapshot_compression=True, snapshot_image_format='raw',
                   group='libvirt')

        self.assertFalse(self._build().compress)

    def test_deleted_image_fails_before_qemu_img_runs(self):
        self.driver._image_api.get.side_effect = (
            nova_exception.ImageNotFound(image_id=base.IMAGE_ID))

        self.assertRaises(nova_exception.ImageNotFound, self._build)
        self.assertEqual([], self.qemu_img.commands)

    def test_insufficient_space_fails_before_the_domain_is_changed(self):
        self.qemu_img.required = 2 ** 62

        self.assertRaises(exception.InsufficientSnapshotSpace, self._build)
        # Only reads: the XML, the power state and the domain id.
        self.assertEqual({'XMLDesc', 'info', 'ID'},
                         {c[0] for c in self.domain.mock.method_calls})


class ColdMethodTestCase(base.TestCase):
    """Which shut-off disks are streamed (coldstream) and which converted."""

    def setUp(self):
        super(ColdMethodTestCase, self).setUp()
        self.which = self.cold_stream_tools()

    def test_stream_and_auto_stream_a_shut_off_disk(self):
        for method in ('stream', 'auto'):
            self.flags(capture_method=method, group='snapdriver')
            for fmt in ('raw', 'qcow2'):
                self.assertEqual('stream', snapshot_plan.cold_method(
                    False, fmt))
        self.which.assert_called_with('qemu-nbd')

    def test_other_methods_convert_as_nova_does(self):
        for method in ('rebase', 'copy', 'backup'):
            self.flags(capture_method=method, group='snapdriver')
            self.assertEqual('rebase', snapshot_plan.cold_method(
                False, 'qcow2'))

    def test_what_cannot_be_streamed_is_converted_and_says_why(self):
        self.flags(capture_method='auto', group='snapdriver')
        self.assertEqual('rebase', snapshot_plan.cold_method(True, 'qcow2'))
        self.assertIn('no compressed image', self.logs.output)
        self.assertEqual('rebase', snapshot_plan.cold_method(False, 'vmdk'))
        self.assertIn('not vmdk', self.logs.output)
        self.which.return_value = None
        self.assertEqual('rebase', snapshot_plan.cold_method(False, 'raw'))
        self.assertIn('qemu-nbd is not installed', self.logs.output)

    def test_a_cold_stream_stages_nothing(self):
        self.assertEqual(0, snapshot_plan.space_needed(
            False, NODE, {'virtual-size': 10 ** 12}, 'raw', 'stream'))


class SuspendTestCase(base.TestCase):
    """disable_libvirt_livesnapshot: which saved guests are ours to stream.

    nova suspends a running or paused guest for a cold snapshot; ours does
    too where it can stream the disk, and leaves the rest to nova.
    """

    def setUp(self):
        super(SuspendTestCase, self).setUp()
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        self.flags(capture_method='stream', group='snapdriver')
        self.which = self.cold_stream_tools()

    def _left_to_nova(self, state=power_state.RUNNING, disk_format='qcow2'):
        """The reason nova_takes_it gives, or None if it is ours."""
        try:
            snapshot_plan.nova_takes_it(state, disk_format)
        except snapshot_plan.NotHandled as e:
            return str(e)
        return None

    def test_a_running_or_paused_guest_is_ours_with_stream(self):
        for state in (power_state.RUNNING, power_state.PAUSED):
            for fmt in ('raw', 'qcow2'):
                self.assertIsNone(self._left_to_nova(state, fmt),
                                  (state, fmt))

    def test_auto_keeps_novas_shorter_outage(self):
        self.flags(capture_method='auto', group='snapdriver')
        self.assertEqual(
            '[workarounds] disable_libvirt_livesnapshot (capture_method '
            'auto keeps nova\'s shorter outage; stream would keep the guest '
            'saved for the upload: nova suspends the guest for a cold '
            'snapshot)', self._left_to_nova())

    def test_methods_that_do_not_stream_leave_it_to_nova(self):
        for method in ('rebase', 'copy', 'backup'):
            self.flags(capture_method=method, group='snapdriver')
            self.assertEqual(
                '[workarounds] disable_libvirt_livesnapshot (capture_method '
                '%s does not stream: nova suspends the guest for a cold '
                'snapshot)' % method, self._left_to_nova())

    def test_what_cannot_be_streamed_is_left_to_nova_and_says_why(self):
        self.flags(snapshot_image_format='vmdk', group='libvirt')
        self.assertIn('a stream writes raw or qcow2 images, not vmdk',
                      self._left_to_nova())
        self.flags(snapshot_image_format=None, group='libvirt')
        self.flags(snapshot_compression=True, group='libvirt')
        self.assertIn('no compressed image', self._left_to_nova())
        self.assertIsNone(self._left_to_nova(disk_format='raw'))
        self.flags(snapshot_compression=False, group='libvirt')
        self.which.return_value = None
        self.assertIn('qemu-nbd is not installed', self._left_to_nova())

    def test_other_live_states_are_left_to_nova(self):
        # nova takes a crashed guest cold as it is, without a suspend.
        self.assertIn('power state crashed',
                      self._left_to_nova(power_state.CRASHED))

    def test_a_shut_off_guest_is_not_suspended(self):
        self.flags(capture_method='rebase', group='snapdriver')
        self.assertIsNone(self._left_to_nova(power_state.SHUTDOWN))

    def test_without_the_workaround_nothing_is_suspended(self):
        self.flags(disable_libvirt_livesnapshot=False, group='workarounds')
        self.flags(capture_method='rebase', group='snapdriver')
        self.assertIsNone(self._left_to_nova())


class BuildSuspendedTestCase(base.TestCase):
    """build() of a guest to save: a cold stream, nothing staged."""

    _build = BuildTestCase._build

    def setUp(self):
        super(BuildSuspendedTestCase, self).setUp()
        self.flags(reserved_space_mb=0, group='snapdriver')
        self.qemu_img, self.execute = self.patch_execute()
        self.qemu_img.required = 3 * MiB
        self.work_dir = self.fix_work_dir()
        self.disk, self.base = self.make_disk()
        self.driver = self.make_driver()
        self.driver._image_api.get.return_value = {'name': 'my snap'}
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        self.flags(capture_method='stream', group='snapdriver')
        self.cold_stream_tools()

    def test_running_and_paused_guests_are_saved_and_streamed(self):
        for state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
            plan = self._build(state=state, hw_qemu_guest_agent='yes')

            self.assertTrue(plan.suspend)
            self.assertFalse(plan.live)
            self.assertTrue(plan.cold_stream)
            self.assertEqual('stream', plan.capture_method)
            self.assertEqual(0, plan.space_needed)
            # A saved guest runs nothing to quiesce.
            self.assertFalse(plan.quiesce)
        self.assertIn('Planned cold snapshot (capture method stream, the '
                      'guest suspended while its disk is read)',
                      self.logs.output)

    def test_a_state_left_to_nova_since_the_driver_asked_is_refused(self):
        self.assertRaises(snapshot_plan.NotHandled, self._build,
                          state=libvirt.VIR_DOMAIN_CRASHED)

    def test_a_shut_off_guest_is_not_saved(self):
        plan = self._build(state=libvirt.VIR_DOMAIN_SHUTOFF)

        self.assertFalse(plan.suspend)
        self.assertTrue(plan.cold_stream)
