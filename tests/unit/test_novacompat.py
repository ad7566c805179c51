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
import json
import os
import subprocess
import sys
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
REPO = os.path.dirname(PACKAGE)
# Private attributes of nova's objects (the driver, Host, Guest).
PRIVATE_ATTRIBUTES = {'_host', '_image_api', '_domain',
                      '_create_snapshot_metadata', '_requires_quiesce',
                      '_can_quiesce', '_delete_guest_configuration',
                      # eventlet's tpool.Proxy
                      '_obj'}
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


class OsThreadsTestCase(base.TestCase):
    """A stream's threads are the OS's, eventlet or not (nova 31 to 34)."""

    def test_plain_modules_where_eventlet_patched_nothing(self):
        import queue
        import threading
        with mock.patch.object(novacompat, 'eventlet_threads',
                               return_value=False):
            self.assertEqual((threading, queue), novacompat.os_threads())
            self.assertEqual(3, novacompat.wait_natively(len, 'abc'))
            domain = object()
            self.assertIs(domain, novacompat.native_domain(domain))

    def test_the_originals_and_the_domain_unwrapped_under_eventlet(self):
        from eventlet import patcher
        from eventlet import tpool
        with mock.patch.object(novacompat, 'eventlet_threads',
                               return_value=True):
            threading, queue = novacompat.os_threads()
            self.assertIs(patcher.original('threading'), threading)
            self.assertIs(patcher.original('queue'), queue)
            domain = object()
            self.assertIs(domain, novacompat.native_domain(
                tpool.Proxy(tpool.Proxy(domain))))
        tpool.killall()

    def test_a_stream_read_in_tpool_under_eventlet(self):
        # nova-compute as nova 31 to 33 start it: eventlet patched all.
        # nova's image API reads the stream in a tpool thread while the
        # read-ahead reads the export; the hub is never held meanwhile.
        # The upload stops half-way (Glance failed), and the stream is
        # closed from nova-compute's green thread: the read-ahead ends at
        # once.  (A green read-ahead lived in the hub of the tpool thread
        # that first read, which no longer ran: the close waited 30 s and
        # left the export open.)
        proc = subprocess.run(
            [sys.executable, '-c', UNDER_EVENTLET], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=120)
        self.assertEqual(0, proc.returncode, proc.stdout)
        result = json.loads(proc.stdout.splitlines()[-1])
        self.assertTrue(result['patched'])
        self.assertEqual(result['expected'], result['read'])
        self.assertTrue(result['closed'])
        self.assertLess(result['close_took'], 5)
        # One read took 1 s in its OS thread; the green ticker (10 ms)
        # ran all along.  A green read-ahead held the hub for that second.
        self.assertLess(result['longest_gap'], 0.5)
        self.assertEqual([], result['alive'])


UNDER_EVENTLET = """
import eventlet
eventlet.monkey_patch()
import hashlib, json, sys
from eventlet import patcher, tpool
from nova_snapdriver import readahead
real_sleep = patcher.original('time').sleep

class Export(object):  # libnbd's pread blocks its OS thread, as here
    def pread(self, offset, length):
        real_sleep(1.0 if offset == 25 * 4096 else 0.005)
        return bytes([offset // 4096 % 251]) * length

ranges = [(i * 4096, 4096) for i in range(50)]
ahead = readahead.ReadAhead(Export(), ranges, depth=2, chunk=4096)
monotonic = patcher.original('time').monotonic
gaps = [0]
def ticker():
    last = monotonic()
    while True:
        eventlet.sleep(0.01)
        now = monotonic()
        gaps[0], last = max(gaps[0], now - last), now
green = eventlet.spawn(ticker)
half = ranges[:30]
def read_half():
    md5 = hashlib.md5()
    for offset, length in half:
        md5.update(ahead.read(offset, length))
    return md5.hexdigest()
read = tpool.execute(read_half)
began = monotonic()
closed = ahead.close()
close_took = monotonic() - began
green.kill()
expected = hashlib.md5(b''.join(Export().pread(*piece) for piece in half))
threading = patcher.original('threading')
print(json.dumps({
    'patched': patcher.is_monkey_patched('thread'), 'read': read,
    'expected': expected.hexdigest(), 'closed': closed,
    'close_took': close_took, 'longest_gap': gaps[0],
    'alive': [t.name for t in threading.enumerate()
              if t.name.startswith('snapdriver')]}))
tpool.killall()
"""
