"""qemu_img: the command lines, and how running one fails."""

from unittest import mock

import fixtures
from oslo_concurrency import processutils

from nova_snapdriver import exception
from nova_snapdriver import qemu_img
from tests.unit import base


class CommandBuilderTestCase(base.TestCase):

    def test_create_overlay_cmd(self):
        self.assertEqual(
            ['qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b',
             '/base', '/work/overlay.qcow2', '1073741824'],
            qemu_img.create_overlay_cmd('/work/overlay.qcow2', '/base',
                                        'raw', 1073741824))

    def test_create_cmd(self):
        self.assertEqual(
            ['qemu-img', 'create', '-f', 'qcow2', '/work/overlay.qcow2',
             '42'],
            qemu_img.create_cmd('/work/overlay.qcow2', 42))

    def test_info_cmd_forces_share_and_format(self):
        self.assertEqual(
            ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json',
             '/disk'],
            qemu_img.info_cmd('/disk', 'qcow2'))

    def test_measure_cmd_forces_share_and_formats(self):
        self.assertEqual(
            ['qemu-img', 'measure', '-U', '-f', 'qcow2', '-O', 'raw',
             '--output=json', '/disk'],
            qemu_img.measure_cmd('/disk', 'qcow2', 'raw'))

    def test_convert_cmd_defaults_to_uncompressed_16_coroutines(self):
        self.assertEqual(
            ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', '-W', '-m',
             '16', '/src', '/dst'],
            qemu_img.convert_cmd('/src', 'qcow2', '/dst', 'raw'))

    def test_convert_cmd_compressed_with_coroutines(self):
        self.assertEqual(
            ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-c', '-W',
             '-m', '4', '/src', '/dst'],
            qemu_img.convert_cmd('/src', 'raw', '/dst', 'qcow2',
                                 compress=True, coroutines=4))


class ExecuteTestCase(base.TestCase):

    def setUp(self):
        super(ExecuteTestCase, self).setUp()
        self.flags(rootwrap_config='/etc/nova/rootwrap.conf')
        self.execute = self.useFixture(fixtures.MockPatchObject(
            processutils, 'execute', autospec=True,
            return_value=('{"required": 12345, "virtual-size": 7}', ''))).mock

    def _assert_ran(self, *cmd):
        self.execute.assert_called_once_with(
            *cmd, run_as_root=True,
            root_helper='sudo nova-rootwrap /etc/nova/rootwrap.conf',
            env_variables={'LC_ALL': 'C', 'LANG': 'C'})

    def test_runs_as_root_through_nova_rootwrap_in_the_c_locale(self):
        qemu_img.create('/o', 5)

        self._assert_ran('qemu-img', 'create', '-f', 'qcow2', '/o', '5')

    def test_disabled_rootwrap_uses_nova_root_helper_sudo(self):
        self.flags(disable_rootwrap=True, group='workarounds')

        qemu_img.create('/o', 5)

        self.assertEqual('sudo', self.execute.call_args.kwargs['root_helper'])

    def test_create_overlay_runs_its_builder_command(self):
        qemu_img.create_overlay('/o', '/b', 'qcow2', 9)

        self._assert_ran(*qemu_img.create_overlay_cmd('/o', '/b', 'qcow2', 9))

    def test_convert_runs_its_builder_command(self):
        qemu_img.convert('/s', 'qcow2', '/d', 'qcow2', compress=True,
                         coroutines=2)

        self._assert_ran(*qemu_img.convert_cmd('/s', 'qcow2', '/d', 'qcow2',
                                               compress=True, coroutines=2))

    def test_info_returns_the_parsed_json(self):
        self.assertEqual({'required': 12345, 'virtual-size': 7},
                         qemu_img.info('/disk', 'raw'))
        self._assert_ran(*qemu_img.info_cmd('/disk', 'raw'))

    def test_measure_returns_the_required_bytes_as_int(self):
        self.execute.return_value = ('{"required": "4096"}', '')

        self.assertEqual(4096, qemu_img.measure('/disk', 'qcow2', 'raw'))
        self._assert_ran(*qemu_img.measure_cmd('/disk', 'qcow2', 'raw'))

    def _test_failure(self, error, exit_code, stderr):
        self.execute.side_effect = error

        exc = self.assertRaises(exception.QemuImgFailed, qemu_img.info,
                                '/disk', 'qcow2')

        command = 'qemu-img info -U -f qcow2 --output=json /disk'
        self.assertEqual(
            {'command': command, 'exit_code': exit_code, 'stderr': stderr},
            {k: exc.kwargs[k] for k in ('command', 'exit_code', 'stderr')})
        self.assertEqual("'%s' failed with exit code %s: %s"
                         % (command, exit_code, stderr), str(exc))
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

        self.assertRaises(ValueError, qemu_img.create, '/o', 1)
