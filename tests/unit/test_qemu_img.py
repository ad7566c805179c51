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

"""qemu_img: the command lines, how they run, and how running one fails."""

import os
import stat
from unittest import mock

import fixtures
from nova.privsep import qemu as nova_qemu
from oslo_concurrency import processutils

from nova_snapdriver import chain
from nova_snapdriver import exception
from nova_snapdriver import qemu_img
from tests.unit import base

DISK = chain.Node('/i/disk', 'qcow2', chain.Node('/c/base', 'raw'))
DISK_JSON = ('json:{"backing": {"driver": "raw", "file": {"driver": "file", '
             '"filename": "/c/base"}}, "driver": "qcow2", "file": {"driver": '
             '"file", "filename": "/i/disk"}}')
DISK_TOP_JSON = ('json:{"backing": null, "driver": "qcow2", "file": '
                 '{"driver": "file", "filename": "/i/disk"}}')
OVERLAY_JSON = ('json:{"backing": {"driver": "raw", "file": {"driver": '
                '"file", "filename": "/c/base"}}, "driver": "qcow2", "file": '
                '{"driver": "file", "filename": "/w/overlay.qcow2"}}')
RAW = chain.Node('/i/disk', 'raw')
RAW_JSON = 'json:{"driver": "raw", "file": {"driver": "file", "filename": ' \
           '"/i/disk"}}'


class CommandBuilderTestCase(base.TestCase):

    def test_create_overlay_names_its_backing_without_opening_it(self):
        self.assertEqual(
            ['qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b',
             '/c/base', '-u', '/w/overlay.qcow2', '1073741824'],
            qemu_img.create_overlay_cmd('/w/overlay.qcow2', DISK.backing,
                                        1073741824))

    def test_create_overlay_over_a_qcow2_base(self):
        self.assertEqual(
            ['qemu-img', 'create', '-f', 'qcow2', '-F', 'qcow2', '-b',
             '/c/base', '-u', '/w/o', '42'],
            qemu_img.create_overlay_cmd(
                '/w/o', chain.Node('/c/base', 'qcow2'), 42))

    def test_create_in_either_format(self):
        self.assertEqual(
            ['qemu-img', 'create', '-f', 'qcow2', '/w/overlay.qcow2', '42'],
            qemu_img.create_cmd('/w/overlay.qcow2', 'qcow2', 42))
        self.assertEqual(['qemu-img', 'create', '-f', 'raw', '/w/image', '7'],
                         qemu_img.create_cmd('/w/image', 'raw', 7))

    def test_info_forces_share_and_opens_the_top_alone(self):
        self.assertEqual(
            ['qemu-img', 'info', '-U', '--output=json', DISK_TOP_JSON],
            qemu_img.info_cmd(DISK))

    def test_info_of_a_raw_disk(self):
        self.assertEqual(['qemu-img', 'info', '-U', '--output=json',
                          RAW_JSON], qemu_img.info_cmd(RAW))

    def test_measure_forces_share_and_names_the_whole_chain(self):
        self.assertEqual(
            ['qemu-img', 'measure', '-U', '-O', 'raw', '--output=json',
             DISK_JSON], qemu_img.measure_cmd(DISK, 'raw'))

    def test_convert_defaults_to_uncompressed_16_coroutines(self):
        self.assertEqual(
            ['qemu-img', 'convert', '-O', 'raw', '-W', '-m', '16',
             DISK_JSON, '/w/image'],
            qemu_img.convert_cmd(DISK, '/w/image', 'raw'))

    def test_convert_compressed_with_coroutines(self):
        self.assertEqual(
            ['qemu-img', 'convert', '-O', 'qcow2', '-c', '-W', '-m', '4',
             OVERLAY_JSON, '/w/image'],
            qemu_img.convert_cmd(
                chain.Node('/w/overlay.qcow2', 'qcow2', DISK.backing),
                '/w/image', 'qcow2', compress=True, coroutines=4))

    def test_no_reading_command_gives_a_format_for_its_json_name(self):
        # -f would make qemu-img take the json: name as a file name.
        for cmd in (qemu_img.info_cmd(DISK),
                    qemu_img.measure_cmd(DISK, 'qcow2'),
                    qemu_img.convert_cmd(DISK, '/w/image', 'qcow2')):
            self.assertNotIn('-f', cmd)
            self.assertEqual(1, len([a for a in cmd
                                     if a.startswith('json:')]), cmd)


class ExecuteTestCase(base.TestCase):

    def setUp(self):
        super(ExecuteTestCase, self).setUp()
        self.execute = self.useFixture(fixtures.MockPatchObject(
            processutils, 'execute', autospec=True,
            return_value=('{"required": 12345, "virtual-size": 7}', ''))).mock
        # What the commands write: files are made before qemu-img runs.
        self.out = os.path.join(self.tmp, 'o')
        self.dst = os.path.join(self.tmp, 'd')

    def _assert_ran(self, cmd, limits=None):
        # As this process's user: no run_as_root, no root_helper.
        self.execute.assert_called_once_with(
            *cmd, prlimit=limits, env_variables=base.QEMU_IMG_ENV)

    def test_create_runs_unlimited_as_this_user_in_the_c_locale(self):
        qemu_img.create(self.out, 'qcow2', 5)

        self._assert_ran(['qemu-img', 'create', '-f', 'qcow2', self.out,
                          '5'])

    def test_create_overlay_runs_its_builder_command(self):
        qemu_img.create_overlay(self.out, DISK.backing, 9)

        self._assert_ran(qemu_img.create_overlay_cmd(self.out, DISK.backing,
                                                     9))

    def test_convert_runs_its_builder_command_without_limits(self):
        qemu_img.convert(DISK, self.dst, 'qcow2', compress=True,
                         coroutines=2, compression_type='zstd')

        self._assert_ran(qemu_img.convert_cmd(
            DISK, self.dst, 'qcow2', compress=True, coroutines=2,
            compression_type='zstd'))

    def test_info_runs_under_novas_qemu_img_limits(self):
        self.assertEqual({'required': 12345, 'virtual-size': 7},
                         qemu_img.info(DISK))

        # What nova's own qemu-img info runs under.
        self._assert_ran(qemu_img.info_cmd(DISK), nova_qemu.QEMU_IMG_LIMITS)
        self.assertIsNotNone(nova_qemu.QEMU_IMG_LIMITS.address_space)

    def test_measure_runs_under_limits_and_returns_an_int(self):
        self.execute.return_value = ('{"required": "4096"}', '')

        self.assertEqual(4096, qemu_img.measure(DISK, 'raw'))
        self._assert_ran(qemu_img.measure_cmd(DISK, 'raw'),
                         nova_qemu.QEMU_IMG_LIMITS)

    def test_nothing_asks_for_root(self):
        qemu_img.create(self.out, 'raw', 1)
        qemu_img.create_overlay(self.out + '2', DISK.backing, 1)
        qemu_img.info(DISK)
        qemu_img.measure(DISK, 'qcow2')
        qemu_img.convert(DISK, self.dst, 'raw')

        self.assertEqual(5, self.execute.call_count)
        for call in self.execute.call_args_list:
            self.assertEqual({'prlimit', 'env_variables'},
                             set(call.kwargs))

    def _test_failure(self, error, exit_code, stderr):
        self.execute.side_effect = error

        exc = self.assertRaises(exception.QemuImgFailed, qemu_img.info, RAW)

        command = 'qemu-img info -U --output=json %s' % RAW_JSON
        self.assertEqual(
            {'command': command, 'exit_code': exit_code, 'stderr': stderr},
            {k: exc.kwargs[k] for k in ('command', 'exit_code', 'stderr')})
        self.assertEqual("'%s' failed with exit code %s: %s (nova-snapdriver "
                         "QemuImgFailed: see Troubleshooting in its "
                         "documentation)" % (command, exit_code, stderr),
                         str(exc))
        self.assertIsInstance(exc, exception.SnapshotError)

    def test_process_error_becomes_qemu_img_failed_with_stripped_stderr(self):
        self._test_failure(
            processutils.ProcessExecutionError(
                exit_code=1, stdout='', stderr='  Could not open /disk\n'),
            1, 'Could not open /disk')

    def test_process_error_without_stderr_has_empty_stderr(self):
        self._test_failure(processutils.ProcessExecutionError(exit_code=2),
                           2, '')

    def test_os_error_becomes_qemu_img_failed_without_exit_code(self):
        self._test_failure(OSError(2, 'No such file or directory'), '-',
                           '[Errno 2] No such file or directory')

    def test_unexpected_error_is_not_translated(self):
        self.execute.side_effect = ValueError(mock.sentinel.message)

        self.assertRaises(ValueError, qemu_img.create, self.out, 'qcow2', 1)


class RealQemuImgTestCase(base.TestCase):
    """The command lines run by the real qemu-img, as this user.

    The disk's header names a file the snapshot must never read; the
    json: name the driver passes wins over it.
    """

    def setUp(self):
        super(RealQemuImgTestCase, self).setUp()
        self.base = base.make_raw(os.path.join(self.tmp, 'base'),
                                  b'BASE' * 1024)
        self.secret = base.make_raw(os.path.join(self.tmp, 'secret'),
                                    b'SECRET' * 1024)
        # The header names the secret; the driver names the base.
        self.disk = base.make_image(os.path.join(self.tmp, 'disk'),
                                    backing=self.secret, backing_fmt='raw')
        self.image = os.path.join(self.tmp, 'image')

    def _read_image(self):
        with open(self.image, 'rb') as f:
            return f.read(4096)

    def test_convert_reads_the_named_backing_not_the_header_s(self):
        qemu_img.convert(chain.Node(self.disk, 'qcow2',
                                    chain.Node(self.base, 'raw')),
                         self.image, 'raw')

        self.assertEqual(b'BASE' * 1024, self._read_image())

    def test_backing_null_opens_nothing_under_the_top(self):
        os.unlink(self.secret)  # opening it would fail the commands
        node = chain.Node(self.disk, 'qcow2')

        self.assertEqual(base.MiB, qemu_img.info(node)['virtual-size'])
        self.assertEqual(base.MiB, qemu_img.measure(node, 'raw'))
        qemu_img.convert(node, self.image, 'raw')

        self.assertEqual(b'\0' * 4096, self._read_image())

    def test_created_overlay_names_the_backing_without_opening_it(self):
        overlay = os.path.join(self.tmp, 'overlay.qcow2')
        missing = chain.Node(os.path.join(self.tmp, 'not-yet'), 'raw')

        qemu_img.create_overlay(overlay, missing, base.MiB)

        self.assertEqual(missing, chain.captured(overlay, 'qcow2',
                                                 missing).backing)

    def test_every_file_written_is_0600_whatever_the_umask(self):
        old = os.umask(0o002)
        self.addCleanup(os.umask, old)
        overlay = os.path.join(self.tmp, 'overlay.qcow2')
        target = os.path.join(self.tmp, 'target.qcow2')

        qemu_img.create_overlay(overlay, chain.Node(self.base, 'raw'),
                                base.MiB)
        qemu_img.create(target, 'qcow2', base.MiB)
        qemu_img.convert(chain.Node(self.disk, 'qcow2',
                                    chain.Node(self.base, 'raw')),
                         self.image, 'raw')

        for path in (overlay, target, self.image):
            self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode),
                             path)
        self.assertEqual(b'BASE' * 1024, self._read_image())

    def test_a_file_already_there_is_not_written(self):
        base.make_raw(self.image, b'KEEP')

        self.assertRaises(FileExistsError, qemu_img.convert,
                          chain.Node(self.base, 'raw'), self.image, 'raw')

        self.assertEqual(b'KEEP', self._read_image()[:4])

    def test_a_link_planted_at_the_path_is_not_followed(self):
        elsewhere = os.path.join(self.tmp, 'elsewhere')
        base.make_raw(elsewhere, b'KEEP')
        os.symlink(elsewhere, self.image)

        self.assertRaises(OSError, qemu_img.create, self.image, 'raw',
                          base.MiB)

        with open(elsewhere, 'rb') as f:
            self.assertEqual(b'KEEP', f.read(4))
