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

"""What the unit tests share: a base class and fakes of the two boundaries.

Mocks stand only where the driver leaves Python: the libvirt domain (an
autospec'd ``libvirt.virDomain`` behind nova's real ``Guest``), the libvirt
host connection (an autospec'd nova ``Host``; for recovery, which talks to
libvirt directly, an autospec'd ``virConnect``), ``processutils.execute`` (a
fake ``qemu-img``) and the image API.  Everything between them, nova's
``Guest``/``BlockDevice``/config parsing and the driver's own modules, runs
for real.
"""

import functools
import hashlib
import logging
import os
import subprocess
import types
from unittest import mock
from xml.etree import ElementTree

import fixtures
import libvirt
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_config import fixture as config_fixture
from oslo_serialization import jsonutils
from oslotest import base as oslotest_base

from nova import context as nova_context
from nova import exception as nova_exception
from nova.image import glance
from nova import objects
from nova.tests.unit import fake_instance
from nova.virt import fake as fake_virt
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import host as libvirt_host

from nova_snapdriver import blockjob
from nova_snapdriver import capture
from nova_snapdriver import driver
from nova_snapdriver import journal
from nova_snapdriver import plan as snapshot_plan

objects.register_all()

CONF = cfg.CONF

INSTANCE_UUID = '6f1b1a3c-2b5e-4c8e-9a0d-3e2f1c4b5a69'
IMAGE_ID = 'c0ffee00-1234-4abc-8def-0123456789ab'
WORK_DIR_RANDOM = '5eed5eed5eed'
DISK_DEV = 'vda'
DISK_SIZE = 10 * 1024 ** 3
MiB = 1024 * 1024
BASE_NAME = '0123abcd'
# The whole environment qemu-img runs with (qemu_img._execute).
QEMU_IMG_ENV = {'LC_ALL': 'C', 'LANG': 'C',
                'PATH': os.environ.get('PATH', os.defpath)}


# What qemu-img says, and exits 1, when the benchmark that sizes a LUKS
# key's PBKDF2 iterations read 0 ms of thread CPU time (getrusage) for its
# first round, 2**15 iterations (~10 ms here): the 'delta_ms == 0' check
# of QEMU commit c72cab5ad9 ("crypto: run qcrypto_pbkdf2_count_iters in a
# new thread"), which Debian 12's qemu 7.2 took with 7.2.14, without its
# fix ("crypto: fix bogus error benchmarking pbkdf on fast machines",
# https://bugzilla.redhat.com/show_bug.cgi?id=2336437).  It fails about
# one LUKS create in twelve, at random, idle or busy; another try passes.
PBKDF_BENCHMARK_BUG = 'Unable to get accurate CPU usage'
PBKDF_BENCHMARK_TRIES = 8


class _LazyAutospec(mock.NonCallableMagicMock):
    """An instance mock whose methods are autospecced when first used.

    ``mock.create_autospec(cls, instance=True)`` specs every method of
    ``cls`` at once: two mocks and a signature each.  ``virDomain`` and
    ``virConnect`` have hundreds, and building them took two thirds of
    the unit tier's time, for the few a test calls.  This builds each
    one as ``create_autospec`` does (a child whose calls are checked
    against the method's signature, ``self`` left out) on its first
    access.  Names not on the class raise AttributeError as before.
    """

    def __getattr__(self, name):
        spec_class = self.__dict__.get('_spec_class')
        if (spec_class is not None and not name.startswith('_')
                and name not in self._mock_children):
            original = getattr(spec_class, name, None)
            if isinstance(original, types.FunctionType):
                child = mock.MagicMock(parent=self, name=name,
                                       _new_name=name, _new_parent=self,
                                       spec=original, _eat_self=True)
                # As create_autospec does: assert_called_with and friends
                # compare calls through the method's signature.
                mock._check_signature(original, child, skipfirst=True)
                self._mock_children[name] = child
        return super().__getattr__(name)


def autospec(cls):
    """``mock.create_autospec(cls, instance=True)``, built lazily."""
    return _LazyAutospec(spec=cls)


class QemuImgFailed(subprocess.CalledProcessError):
    """A test's own qemu-img failed: the command and its stderr, shown."""

    def __str__(self):
        return ('%s\nstderr: %s\nstdout: %s' % (
            super(QemuImgFailed, self).__str__(),
            (self.stderr or b'').decode('utf-8', 'replace').strip(),
            (self.output or b'').decode('utf-8', 'replace').strip()))


def run_qemu_img(cmd):
    """Run the real qemu-img ``cmd``; QemuImgFailed with its stderr if not.

    A failure of its key derivation benchmark (``PBKDF_BENCHMARK_BUG``, a
    QEMU bug that has nothing to do with the command) is retried.
    """
    for _ in range(PBKDF_BENCHMARK_TRIES):
        result = subprocess.run(cmd, capture_output=True)
        if result.returncode == 0:
            return result
        if PBKDF_BENCHMARK_BUG.encode() not in result.stderr:
            break
    raise QemuImgFailed(result.returncode, cmd, result.stdout,
                        result.stderr)


def make_image(path, fmt='qcow2', size=MiB, backing=None, backing_fmt=None,
               options=None, args=()):
    """A real image, made by the real qemu-img.

    Not through ``processutils`` (tests mock it): the file is what nova or
    QEMU would have left, for ``chain`` to read.  ``backing`` is named,
    not opened (``-u``).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cmd = ['qemu-img', 'create', '-q', '-f', fmt] + list(args)
    if backing is not None:
        cmd += ['-b', backing, '-F', backing_fmt, '-u']
    if options:
        cmd += ['-o', options]
    run_qemu_img(cmd + [path, str(size)])
    return path


def make_raw(path, data=b'', size=MiB):
    """A raw file of ``size`` bytes beginning with ``data``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
        f.truncate(size)
    return path


def begin_journal_record(snapshots_dir, image_id=IMAGE_ID, **fields):
    """Write the journal record of a rebase snapshot that is copying.

    Returns the record with its lock held; ``fields`` (``xml`` and
    ``disk_path`` among them) override the defaults.
    """
    values = dict(
        instance_uuid=INSTANCE_UUID, instance_name='instance-00000001',
        image_id=image_id, disk_path=None, disk_dev=DISK_DEV,
        work_dir=os.path.join(snapshots_dir, image_id), xml=None,
        persistent=True, phase='copying')
    values.update(fields)
    return journal.begin(**values)


def libvirt_error(code, message='fake libvirt error'):
    """A libvirtError whose get_error_code() is ``code``."""
    error = libvirt.libvirtError(message)
    error.err = (code, libvirt.VIR_FROM_DOMAIN, message,
                 libvirt.VIR_ERR_ERROR, None, None, None, -1, -1)
    return error


def file_disk_xml(path, fmt='qcow2', dev=DISK_DEV):
    return ("<disk type='file' device='disk'>"
            "<driver name='qemu' type='%s'/>"
            "<source file='%s'/>"
            "<target dev='%s' bus='virtio'/>"
            "%%(mirror)s</disk>" % (fmt, path, dev))


def mirror_xml(ready, path='/nowhere/overlay.qcow2'):
    """The <mirror> of a copy job; ``ready`` '' leaves the attribute out."""
    ready_attr = " ready='%s'" % ready if ready else ''
    return ("<mirror type='file' file='%s' format='qcow2' job='copy'%s>"
            "<format type='qcow2'/><source file='%s'/></mirror>"
            % (path, ready_attr, path))


class FakeDomain(object):
    """An autospec'd virDomain holding the little state a snapshot sees.

    ``mock`` is the virDomain; assert on it.  By default a block copy
    (blockRebase with the COPY flag) is a ready mirror at once, and an abort
    ends it; tests replace the side effects to script other behaviour.
    """

    def __init__(self, disk_xml, uuid=INSTANCE_UUID, virt_type='kvm',
                 state=libvirt.VIR_DOMAIN_RUNNING, persistent=True,
                 copy_size=DISK_SIZE):
        self.disk_xml = disk_xml
        self.uuid = uuid
        self.virt_type = virt_type
        self.state = state
        self.persistent = persistent
        self.copy_size = copy_size
        self.job = None
        self.mirror = None
        self.mock = self.new_handle()

    def new_handle(self):
        """A virDomain for this domain on a connection of its own.

        Its state (job, mirror, persistence) is the domain's, shared by
        every handle, as libvirtd holds it.
        """
        m = autospec(libvirt.virDomain)
        m.XMLDesc.side_effect = self._xml
        m.blockJobInfo.side_effect = self._job_info
        m.blockRebase.side_effect = self._rebase
        m.blockCopy.side_effect = self._copy
        m.blockJobAbort.side_effect = self._abort
        m.isPersistent.side_effect = lambda: self.persistent
        m.undefineFlags.side_effect = self._undefine
        m.isActive.side_effect = lambda: int(
            self.state != libvirt.VIR_DOMAIN_SHUTOFF)
        m.info.side_effect = lambda: [self.state, 1048576, 1048576, 1, 0]
        m.ID.return_value = 1
        m.UUIDString.return_value = self.uuid
        m.name.return_value = 'instance-00000001'
        m.connect.return_value = autospec(libvirt.virConnect)
        m.connect.return_value.isAlive.return_value = 1
        return m

    def restart_libvirtd(self):
        """libvirtd restarted: the domain runs on, its handles are dead.

        The handle in ``mock`` (returned) now belongs to a closed
        connection: ``connect().isAlive()`` is 0 and every other call
        raises the libvirtError libvirt raises then.  ``mock`` becomes a
        handle on a new connection, the one a lookup (``FakeConnection``)
        returns.  The domain's state, its block job included, is kept.
        """
        old = self.mock
        old.connect.return_value.isAlive.return_value = 0
        closed = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                               'internal error: client socket is closed')
        for name in dir(libvirt.virDomain):
            if not name.startswith('_') and name != 'connect':
                getattr(old, name).side_effect = closed
        self.mock = self.new_handle()
        return old

    def xml(self, flags=0):
        mirror = ''
        if self.mirror is not None and not (
                flags & libvirt.VIR_DOMAIN_XML_INACTIVE):
            mirror = mirror_xml(self.mirror)
        return ("<domain type='%s'><name>instance-00000001</name>"
                "<uuid>%s</uuid><memory>1048576</memory><vcpu>1</vcpu>"
                "<os><type>hvm</type></os>"
                "<devices>%s</devices></domain>"
                % (self.virt_type, self.uuid,
                   self.disk_xml % {'mirror': mirror}))

    def _xml(self, flags=0):
        return self.xml(flags)

    def _job_info(self, disk, flags=0):
        return dict(self.job) if self.job else {}

    def _rebase(self, disk, base, bandwidth=0, flags=0):
        if flags & libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY:
            self.job = {'type': libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
                        'bandwidth': bandwidth, 'cur': self.copy_size,
                        'end': self.copy_size}
            self.mirror = 'yes'
        return 0

    def _copy(self, disk, destxml, params=None, flags=0):
        return self._rebase(disk, None, 0,
                            libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY)

    def _abort(self, disk, flags=0):
        self.job = None
        self.mirror = None
        return 0

    def _undefine(self, flags=0):
        self.persistent = False
        return 0


class FakeConnection(object):
    """An autospec'd virConnect whose domains are FakeDomains, by UUID.

    ``mock`` is the virConnect.  ``lookupByUUIDString`` fails as libvirt
    does (VIR_ERR_NO_DOMAIN) for a UUID it does not hold; ``defineXML``
    makes that domain persistent again, with the XML it was given.
    """

    def __init__(self, *domains):
        self.domains = {d.uuid: d for d in domains}
        self.defined = []
        m = self.mock = autospec(libvirt.virConnect)
        m.lookupByUUIDString.side_effect = self._lookup
        m.defineXML.side_effect = self._define

    def _lookup(self, uuid):
        if uuid not in self.domains:
            raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN,
                                'Domain not found: no domain with '
                                'matching uuid')
        return self.domains[uuid].mock

    def _define(self, xml):
        self.defined.append(xml)
        uuid = ElementTree.fromstring(xml).findtext('uuid')
        dom = self.domains.get(uuid)
        if dom is None:
            # Defined anew, shut off, from a definition we cannot parse
            # back into a FakeDomain: good enough for what tests look at.
            dom = self.domains[uuid] = FakeDomain(
                file_disk_xml('/nowhere'), uuid=uuid,
                state=libvirt.VIR_DOMAIN_SHUTOFF)
        dom.persistent = True
        return dom.mock


def hypervisor_unavailable():
    """What nova's Host.get_connection raises while libvirtd is away."""
    return nova_exception.HypervisorUnavailable()


class FakeQemuImg(object):
    """``processutils.execute`` as far as the qemu-img commands go.

    ``info`` and ``measure`` answer from ``disk_info`` and ``required``;
    ``create`` runs the real ``qemu-img create`` (the driver reads the
    header of what it made), ``convert`` writes ``image_data`` to its
    destination.  ``fail`` maps a sub-command to the exception it raises.
    """

    def __init__(self, disk_info=None, required=1024 * 1024,
                 image_data=b'snapshot image bytes'):
        self.disk_info = disk_info or {'virtual-size': DISK_SIZE,
                                       'actual-size': 2 * 1024 ** 2,
                                       'format': 'qcow2'}
        self.required = required
        self.image_data = image_data
        self.fail = {}
        self.commands = []

    def __call__(self, *cmd, **kwargs):
        cmd = list(cmd)
        self.commands.append(cmd)
        sub = cmd[1]
        if sub in self.fail:
            raise self.fail[sub]
        if sub == 'info':
            return jsonutils.dumps(self.disk_info), ''
        if sub == 'measure':
            return jsonutils.dumps({'required': self.required,
                                    'fully-allocated': DISK_SIZE}), ''
        if sub == 'create':
            run_qemu_img(cmd)
        elif sub == 'convert':
            with open(cmd[-1], 'wb') as f:
                f.write(self.image_data)
        return '', ''


def glance_image(data, **fields):
    """What nova's image API returns after Glance stored ``data``."""
    image = {'id': IMAGE_ID, 'name': 'snap', 'status': 'active',
             'size': len(data),
             'checksum': hashlib.md5(data, usedforsecurity=False).hexdigest(),
             'os_hash_algo': 'sha512',
             'os_hash_value': hashlib.sha512(data).hexdigest(),
             'properties': {}}
    image.update(fields)
    return image


class FakeGlance(fixtures.Fixture):
    """nova's Glance API for the driver's tests: properties, data, image.

    ``image_api`` is an autospecced ``glance.API``; the image's data,
    sent through ``novacompat.GlanceUploader``, is read whole and kept
    with what ``on_upload()`` returned then.  ``get`` answers the image
    as Glance stored the last upload (``stored`` replaces its bytes), or
    ``before`` until one came.
    """

    def __init__(self, image_api, on_upload=lambda: None,
                 before=None):
        self.image_api = image_api
        self.on_upload = on_upload
        self.before = before or {'name': 'snap'}
        self.uploaded = []
        self.stored = None
        self.send_error = None

    def _setUp(self):
        fake = self

        class Uploader(object):
            server = 'http://glance.test:9292'

            def __init__(self, context):
                pass

            def send(self, image_id, data):
                if fake.send_error is not None:
                    raise fake.send_error
                fake.uploaded.append((b''.join(iter(data)),
                                      fake.on_upload()))

        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.novacompat.GlanceUploader', Uploader))
        self.image_api.update.return_value = {}
        self.image_api.get.side_effect = self._get

    def _get(self, context, image_id):
        if not self.uploaded:
            return dict(self.before)
        data = self.uploaded[-1][0] if self.stored is None else self.stored
        return glance_image(data)


class FakeClock(object):
    """A monotonic clock that only ``sleep`` moves."""

    def __init__(self, now=100.0):
        self.now = now
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, secs):
        self.sleeps.append(secs)
        self.now += secs


class TestCase(oslotest_base.BaseTestCase):
    """Config fixture, captured logs, tmp snapshots and journal dirs."""

    def setUp(self):
        super(TestCase, self).setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.logs = self.useFixture(fixtures.FakeLogger(
            level=logging.DEBUG, format='%(levelname)s %(message)s'))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.snapshots_dir = os.path.join(self.tmp, 'snapshots')
        self.flags(snapshots_directory=self.snapshots_dir, group='libvirt')
        # Never the default under $state_path: outside tmp, and shared
        # (its locks would block) with any other run.  Anything else kept
        # under $state_path lands in tmp too.
        self.flags(state_path=os.path.join(self.tmp, 'state'))
        self.journal_dir = os.path.join(self.tmp, 'journal')
        self.flags(journal_path=self.journal_dir, group='snapdriver')
        self.context = nova_context.get_admin_context()

    def flags(self, group=None, **kw):
        self.conf.config(group=group, **kw)

    def cold_stream_tools(self):
        """qemu-nbd and libnbd's binding present, whatever this host has.

        Returns the mock of ``shutil.which`` (set its return_value to None:
        no qemu-nbd).
        """
        self.useFixture(fixtures.MockPatchObject(
            snapshot_plan, 'libnbd_available', return_value=True))
        return self.useFixture(fixtures.MockPatch(
            'shutil.which', return_value='/usr/bin/qemu-nbd')).mock

    def fix_work_dir(self):
        """The work dir a snapshot of IMAGE_ID plans, made predictable.

        Its random part (``plan.work_dir_name``) is fixed for the test.
        """
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.plan.secrets.token_hex',
            return_value=WORK_DIR_RANDOM))
        return os.path.join(self.snapshots_dir,
                            IMAGE_ID[:8] + '.' + WORK_DIR_RANDOM)

    def make_disk(self, fmt='qcow2', backing_fmt='raw'):
        """nova's layout in tmp: a base in the image cache, a disk over it.

        ``[DEFAULT] instances_path`` is set to tmp/instances; the base is
        raw (``backing_fmt``) in ``_base``, the instance's disk a qcow2
        backed by it (``backing_fmt`` None: unbacked), or a raw file
        (``fmt`` 'raw').  Returns (disk, base).
        """
        self.instances_path = os.path.join(self.tmp, 'instances')
        self.flags(instances_path=self.instances_path)
        base = os.path.join(self.instances_path, '_base', BASE_NAME)
        if backing_fmt == 'qcow2':
            make_image(base)
        else:
            make_raw(base, b'the base image')
        disk = os.path.join(self.instances_path, INSTANCE_UUID, 'disk')
        if fmt == 'raw':
            make_raw(disk, b'a raw disk')
        elif backing_fmt is None:
            make_image(disk, size=DISK_SIZE)
        else:
            make_image(disk, size=DISK_SIZE, backing=base,
                       backing_fmt=backing_fmt)
        return disk, base

    def make_instance(self, **image_props):
        """An Instance whose image_meta carries ``image_props``."""
        sysmeta = {'image_%s' % k: v for k, v in image_props.items()}
        return fake_instance.fake_instance_obj(
            self.context, uuid=INSTANCE_UUID, system_metadata=sysmeta,
            expected_attrs=['system_metadata'])

    def make_driver(self):
        """The real SnapLibvirtDriver on a mocked host and image API."""
        drv = driver.SnapLibvirtDriver(fake_virt.FakeVirtAPI(), False)
        drv._host = autospec(libvirt_host.Host)
        drv._image_api = autospec(glance.API)
        # init_host() learns this from libvirt's version; a new enough one.
        drv._may_keep_vtpm = True
        return drv

    def connect_host(self, drv, connection):
        """Make ``drv``'s autospec'd Host talk to ``connection``.

        As nova's Host does: ``get_guest`` looks the domain up on
        ``get_connection()`` (InstanceNotFound for no such domain,
        InternalError for another libvirt error) and
        ``write_instance_config`` defines it there.  Make
        ``get_connection`` raise HypervisorUnavailable for a libvirtd
        that does not answer.
        """
        host = drv._host
        # A side effect, not a return value: the connection's calls stay
        # its own, out of the Host's mock_calls.
        host.get_connection.side_effect = lambda: connection.mock

        def get_guest(instance):
            try:
                domain = host.get_connection().lookupByUUIDString(
                    instance.uuid)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise nova_exception.InstanceNotFound(
                        instance_id=instance.uuid)
                raise nova_exception.InternalError(str(e))
            return libvirt_guest.Guest(domain)

        def write_instance_config(xml):
            return libvirt_guest.Guest(host.get_connection().defineXML(xml))
        host.get_guest.side_effect = get_guest
        host.write_instance_config.side_effect = write_instance_config

    def fake_capture_clock(self):
        """A FakeClock for capture's waits on libvirtd: nothing sleeps.

        ``lookup_guest``, ``redefine`` and ``blockjob.abort_backup`` bind
        time.sleep and time.monotonic as defaults, where no patch of the
        time module reaches them: they are patched to run on the clock.
        """
        clock = FakeClock()
        for module, name in ((capture, 'lookup_guest'),
                             (capture, 'redefine'),
                             (blockjob, 'abort_backup')):
            self.useFixture(fixtures.MockPatchObject(
                module, name, functools.partial(
                    getattr(module, name), sleep=clock.sleep, clock=clock)))
        return clock

    def make_guest(self, fake_domain):
        return libvirt_guest.Guest(fake_domain.mock)

    def patch_execute(self, fake=None):
        fake = fake or FakeQemuImg()
        execute = self.useFixture(fixtures.MockPatchObject(
            processutils, 'execute', autospec=True, side_effect=fake)).mock
        return fake, execute
