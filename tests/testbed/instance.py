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

"""An instance laid out the way nova lays it out, running in a real QEMU.

    instances/_base/<sha1>        the base image (raw or qcow2)
    instances/<uuid>/disk         qcow2 over the base: the instance's disk
    domain instance-%08x          uuid = the instance's, persistent, running

Known data is written with qemu-io before the domain starts: the base holds
one pattern, the instance's own layer another on top of part of it, so a
snapshot that lost either layer, or its backing file, is caught by
``qemu-img compare`` against the disk.

An instance of an image with hw_qemu_guest_agent=yes gets the guest agent
channel nova's libvirt driver adds, made by nova's own code, and the
guest runs the real QEMU guest agent on it (or, to play a guest whose
agent does not answer, nothing).
"""

import hashlib
import json
import os
import shutil
import subprocess
import time

import libvirt
import libvirt_qemu
from nova.network import model as network_model
from nova import objects
from nova.virt.libvirt import driver as libvirt_driver
from oslo_utils import uuidutils

from tests.testbed import guest as test_guest
from tests.testbed import nova_env

MiB = 1024 * 1024
# qcow2 header extension types: the backing file's format, and one unknown.
BACKING_FORMAT_EXT = bytes.fromhex('e2792aca')
UNKNOWN_EXT = bytes.fromhex('5eed0001')
# Patterns (offset MiB, length MiB, byte): all below guest.MARKER_BASE.
BASE_DATA = ((0, 8, 0xa1), (20, 4, 0xa2))
DISK_DATA = ((4, 8, 0xb1), (28, 2, 0xb2))
# NovaInstance(agent=...): the guest runs qemu-ga on nova's channel, or
# the channel is there and nothing in the guest answers on it.
AGENT_QEMU_GA = 'qemu-ga'
AGENT_SILENT = 'silent'


def qemu_io(path, fmt, *commands):
    args = ['qemu-io', '-f', fmt]
    for command in commands:
        args += ['-c', command]
    subprocess.run(args + [path], check=True, capture_output=True)


def write_patterns(path, fmt, patterns):
    qemu_io(path, fmt, *['write -P 0x%x %dM %dM' % (byte, off, size)
                         for off, size, byte in patterns])


def drop_backing_format(path):
    """Make ``path`` a disk of an older nova: no backing format named.

    nova passed ``backing_fmt`` only from Rocky on; before, a qcow2 disk's
    header named its base but not the base's format.  Today's qemu-img
    refuses to create such a header, so the backing format extension is
    turned into one of a type nobody knows, which QEMU ignores by the
    qcow2 specification.
    """
    with open(path, 'r+b') as f:
        header = f.read(65536)
        found = header.find(BACKING_FORMAT_EXT)
        assert found > 0, 'no backing format extension in %s' % path
        f.seek(found)
        f.write(UNKNOWN_EXT)


class NovaInstance(object):
    """One test instance: files, domain and the nova object that names it.

    ``mode`` is the guest's: 'idle' (never writes) or 'markers' (writes
    numbered markers, see tests/testbed/guest.py).  ``agent``: None (no
    guest agent channel), AGENT_QEMU_GA or AGENT_SILENT (nova's channel;
    qemu-ga answers on it, or nothing does).  The image property
    hw_qemu_guest_agent, which nova checks, is the test's to set.
    """

    _next_id = 1

    def __init__(self, conn, boot_files, base_format='raw', disk_mib=64,
                 mode='idle', marks=100000, image_meta=None,
                 instances_path=None, cache_name='_base', owner=None,
                 backing_format_in_header=True, emulator=None,
                 prefill_markers_mib=0, agent=None, image_ref=None):
        self.conn = conn
        # The image it was booted from: one in Glance makes the upload
        # hash as Glance hashes (upload.hashes_for); else one nobody has.
        self.image_ref = image_ref or uuidutils.generate_uuid()
        self.kernel, self.initrd = boot_files
        self.base_format = base_format
        self.disk_size = disk_mib * MiB
        self.mode = mode
        self.marks = marks
        self.image_meta = dict(image_meta or {})
        self.uuid = uuidutils.generate_uuid()
        self.id = NovaInstance._next_id
        NovaInstance._next_id += 1
        # Another compute host's layout (tests/testbed/compute_host.py):
        # its instances_path, image cache name and the files' owner.
        instances = instances_path or nova_env.CONF.instances_path
        self.owner = owner
        self.backing_format_in_header = backing_format_in_header
        self.emulator = emulator
        # Old data where the guest will write its markers: copy-before-
        # write then has something to copy (zeros it writes as zeros).
        self.prefill_markers_mib = prefill_markers_mib
        assert agent in (None, AGENT_QEMU_GA, AGENT_SILENT), agent
        self.agent = agent
        self.agent_socket = None
        self.base_path = os.path.join(
            instances, cache_name,
            hashlib.sha1(self.uuid.encode()).hexdigest())
        self.dir = os.path.join(instances, self.uuid)
        self.disk_path = os.path.join(self.dir, 'disk')
        self.console_log = os.path.join(self.dir, 'console.log')
        self.obj = None
        self.domain = None

    # -- files ---------------------------------------------------------
    def create_disks(self):
        os.makedirs(os.path.dirname(self.base_path), exist_ok=True)
        os.makedirs(self.dir, exist_ok=True)
        subprocess.run(['qemu-img', 'create', '-f', self.base_format,
                        self.base_path, str(self.disk_size)],
                       check=True, capture_output=True)
        write_patterns(self.base_path, self.base_format, BASE_DATA)
        subprocess.run(['qemu-img', 'create', '-f', 'qcow2',
                        '-F', self.base_format, '-b', self.base_path,
                        self.disk_path], check=True, capture_output=True)
        write_patterns(self.disk_path, 'qcow2', DISK_DATA)
        if self.prefill_markers_mib:
            write_patterns(self.disk_path, 'qcow2', (
                (test_guest.MARKER_BASE // MiB, self.prefill_markers_mib,
                 0xcc),))
        if not self.backing_format_in_header:
            drop_backing_format(self.disk_path)
        if self.owner:
            # nova-compute creates these as its own user.
            for path in (self.base_path, self.dir, self.disk_path):
                os.chown(path, *self.owner)

    # -- domain --------------------------------------------------------
    @property
    def name(self):
        return self.obj.name

    def xml(self):
        channel = None
        if self.agent:
            channel = nova_agent_channel(self.obj)
            self.agent_socket = channel.source_path
            channel = channel.to_xml()
        return test_guest.domain_xml(
            self.uuid, self.name, self.disk_path, 'qcow2',
            self.kernel, self.initrd, self.console_log, mode=self.mode,
            marks=self.marks, emulator=self.emulator, channel=channel,
            agent=self.agent != AGENT_SILENT)

    def start(self):
        """Create files, define and start the domain; wait for the guest.

        With a running agent, also until libvirt reaches it.
        """
        self.obj = make_instance_object(self)
        self.create_disks()
        self.domain = self.conn.defineXML(self.xml())
        self.domain.create()
        test_guest.wait_for_console(self.console_log, test_guest.READY,
                                    timeout=120)
        if self.agent == AGENT_QEMU_GA:
            self.wait_for_agent()
        return self

    # -- guest agent ---------------------------------------------------
    def agent_command(self, command, timeout=10):
        """Run a guest agent command through libvirt; return its result."""
        reply = libvirt_qemu.qemuAgentCommand(
            self.lookup(), json.dumps({'execute': command}), timeout, 0)
        return json.loads(reply)['return']

    def wait_for_agent(self, timeout=60):
        """Wait until the guest agent answers a guest-ping."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.agent_command('guest-ping')
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def ref_json(self):
        """The instance for ``tests.testbed.child``, as JSON."""
        return json.dumps({'uuid': self.uuid, 'id': self.id,
                           'image_meta': self.image_meta,
                           'image_ref': self.image_ref})

    def lookup(self):
        """The domain as libvirt has it now (it may have been redefined)."""
        return self.conn.lookupByUUIDString(self.uuid)

    def state(self):
        return self.lookup().state()[0]

    def is_persistent(self):
        return bool(self.lookup().isPersistent())

    def cleanup(self):
        try:
            dom = self.lookup()
        except libvirt.libvirtError:
            dom = None
        if dom is not None:
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()  # a transient domain is gone after this
            if persistent:
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM |
                    # A cold snapshot by nova's code saves the guest.
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        shutil.rmtree(self.dir, ignore_errors=True)
        # QEMU removes its socket when it exits, but not when killed.
        for path in (self.base_path, self.agent_socket):
            if path and os.path.lexists(path):
                os.unlink(path)


class InstanceRef(object):
    """What another process needs to rebuild an instance's nova object."""

    def __init__(self, uuid, id, image_meta, image_ref=None):
        self.uuid = uuid
        self.id = id
        self.image_meta = image_meta
        self.image_ref = image_ref or uuidutils.generate_uuid()


class _Devices(list):
    """A guest config that only collects what is added to it."""

    add_device = list.append


def nova_agent_channel(instance):
    """The guest agent channel nova's libvirt driver gives ``instance``.

    Made by nova's own ``_add_qga_device``, which uses nothing of the
    driver but the instance's name.
    """
    devices = _Devices()
    libvirt_driver.LibvirtDriver._add_qga_device(None, devices, instance)
    [channel] = devices
    return channel


def make_instance_object(inst):
    """A nova Instance as nova-compute holds it (no database needed)."""
    sysmeta = {'image_disk_format': 'qcow2',
               'image_container_format': 'bare',
               'image_min_disk': '1',
               'image_min_ram': '0',
               'image_base_image_ref': 'base-image-ref'}
    for key, value in inst.image_meta.items():
        sysmeta['image_%s' % key] = value
    flavor = objects.Flavor(
        id=1, flavorid='1', name='m1.snap', memory_mb=256, vcpus=1,
        root_gb=1, ephemeral_gb=0, swap=0, extra_specs={})
    return objects.Instance(
        id=inst.id, uuid=inst.uuid, image_ref=inst.image_ref,
        project_id=nova_env.PROJECT_ID, user_id=nova_env.USER_ID,
        kernel_id='', ramdisk_id='', os_type='linux',
        host='localhost', node='localhost', vm_state='active',
        task_state='image_snapshot', power_state=1,
        flavor=flavor, system_metadata=sysmeta, metadata={},
        # What nova's suspend and resume (a cold snapshot of a running
        # guest) read: no PCI device, no port.
        pci_devices=objects.PciDeviceList(objects=[]), numa_topology=None,
        pci_requests=objects.InstancePCIRequests(requests=[]),
        info_cache=objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo()))
