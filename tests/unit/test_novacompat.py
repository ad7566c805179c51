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

"""novacompat: nova's private names, all of them there, all of them real.

Run by the unit tier on each supported nova release (tox envs
``unit-nova31`` .. and ``py3`` for 34): a release that renamed or dropped
one of the names fails here, by name, before a snapshot would.
"""

import ast
import inspect
import os
from unittest import mock

from nova.compute import utils as compute_utils
from nova.privsep import qemu as nova_qemu
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import host as libvirt_host
from nova.virt.libvirt import utils as libvirt_utils

import nova_snapdriver
from nova_snapdriver import novacompat
from tests.unit import base

PACKAGE = os.path.dirname(nova_snapdriver.__file__)
# Private attributes of nova's objects (the driver, Host, Guest).
PRIVATE_ATTRIBUTES = {'_host', '_image_api', '_domain',
                      '_create_snapshot_metadata', '_requires_quiesce',
                      '_can_quiesce', '_delete_guest_configuration'}
# nova modules whose contents are nova's own business.
PRIVATE_MODULES = {'nova.compute.utils', 'nova.privsep.qemu', 'nova.utils',
                   'nova.virt.libvirt.utils', 'nova.service_auth'}


def modules():
    for top, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py') and name != 'novacompat.py':
                yield os.path.join(top, name)


class OneModuleTestCase(base.TestCase):

    def test_no_other_module_uses_a_private_nova_name(self):
        found = []
        for path in modules():
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            where = os.path.relpath(path, PACKAGE)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and
                        node.attr in PRIVATE_ATTRIBUTES and
                        not (isinstance(node.value, ast.Name) and
                             node.value.id == 'self' and
                             node.attr not in ('_host', '_image_api'))):
                    found.append('%s:%d .%s' % (where, node.lineno,
                                                node.attr))
                if isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        full = '%s.%s' % (node.module, alias.name)
                        if full in PRIVATE_MODULES or (
                                node.module in PRIVATE_MODULES):
                            found.append('%s:%d import %s'
                                         % (where, node.lineno, full))
        self.assertEqual([], found)


class NamesExistTestCase(base.TestCase):
    """Each name novacompat reaches exists in this nova, as it is used."""

    def test_driver_methods_take_the_arguments_given(self):
        for name, params in (
                ('_create_snapshot_metadata',
                 ['image_meta', 'instance', 'img_fmt', 'snp_name']),
                ('_requires_quiesce', ['image_meta']),
                ('_can_quiesce', ['instance', 'image_meta']),
                ('_delete_guest_configuration',
                 ['guest', 'keep_vtpm', 'keep_nvram'])):
            method = getattr(libvirt_driver.LibvirtDriver, name)
            self.assertEqual(
                ['self'] + params,
                list(inspect.signature(method).parameters), name)

    def test_the_driver_and_guest_attributes_are_set(self):
        init = inspect.getsource(libvirt_driver.LibvirtDriver.__init__)
        self.assertIn('self._host = ', init)
        self.assertIn('self._image_api = ', init)
        self.assertIn('self._domain = ',
                      inspect.getsource(libvirt_guest.Guest.__init__))
        for name in ('get_guest', 'get_connection',
                     'write_instance_config'):
            self.assertTrue(callable(getattr(libvirt_host.Host, name)))

    def test_module_names(self):
        self.assertTrue(callable(libvirt_utils.find_disk))
        self.assertTrue(callable(libvirt_utils.get_disk_type_from_path))
        self.assertIsNotNone(nova_qemu.QEMU_IMG_LIMITS.address_space)
        self.assertIs(compute_utils.disk_ops_semaphore,
                      novacompat.disk_ops_semaphore())


class NativeThreadsTestCase(base.TestCase):

    def test_novas_own_answer_where_it_has_one(self):
        with mock.patch('nova.utils.concurrency_mode_threading',
                        create=True, return_value=True):
            self.assertTrue(novacompat.native_threads())
        with mock.patch('nova.utils.concurrency_mode_threading',
                        create=True, return_value=False):
            self.assertFalse(novacompat.native_threads())

    def test_nova_31_asks_eventlet(self):
        # nova 31 has no concurrency_mode_threading, and always runs
        # nova-compute under eventlet.
        with mock.patch.object(novacompat, 'nova_utils',
                               mock.Mock(spec=[])):
            with mock.patch('eventlet.patcher.is_monkey_patched',
                            return_value=True):
                self.assertFalse(novacompat.native_threads())
            with mock.patch('eventlet.patcher.is_monkey_patched',
                            return_value=False):
                self.assertTrue(novacompat.native_threads())
