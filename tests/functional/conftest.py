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

"""Real parts for the functional tests: libvirtd, Glance, nova, instances.

Session-wide: libvirtd (started if it is not running), one glance-api on
loopback, nova configured as nova-compute configures itself, the guest's
kernel and initramfs, and our driver loaded by name.  Per test: a fresh
instance (files + running domain) and a fresh snapshot image in Glance.
Nothing here skips: a part that is missing fails the run.
"""

import io
import os
import random
import shutil
import subprocess
import tempfile

import pytest

from tests.testbed import nova_env  # noqa: I100  (imports nova.tests first)

from nova.compute import utils as compute_utils  # noqa: E402
from nova.image import glance as nova_glance  # noqa: E402

from nova_snapdriver import journal  # noqa: E402
from nova_snapdriver import progress  # noqa: E402

from tests.testbed import compute_host as test_compute_host  # noqa: E402
from tests.testbed import glance as test_glance  # noqa: E402
from tests.testbed import guest as test_guest  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402
from tests.testbed import libvirtd  # noqa: E402

GUEST_CACHE = os.environ.get('SNAPDRIVER_GUEST_CACHE',
                             '/var/tmp/nova-snapdriver-guest')


@pytest.fixture(scope='session', autouse=True)
def unique_domain_names():
    """Start the instance-%08x name counter at a random high base.

    Test runs sharing one libvirtd (a developer's and CI's, two worktrees)
    then do not define domains with the same name.
    """
    test_instance.NovaInstance._next_id = 0x5000000 + random.randrange(
        0x1000000)


def let_qemu_in(path, top='/'):
    """Let QEMU (an unprivileged user) enter ``path`` and its parents.

    Directories made by mkdtemp and pytest are 0700; libvirt hands QEMU
    the files a domain uses (dynamic_ownership), but QEMU must still pass
    through every directory above them.  Adds search (x) permission for
    others from ``path`` up to ``top``, nothing else.
    """
    path = os.path.abspath(path)
    top = os.path.abspath(top)
    while True:
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, (mode & 0o7777) | 0o011)
        if path == top or path == os.path.dirname(path):
            return
        path = os.path.dirname(path)


def method_expected(asked, compressed):
    """The capture method the plan must pick on this host, no fallback.

    This host streams: libvirt 9.0 and QEMU 7.2 run pull-mode backups,
    libnbd is linked in, the tier runs on native threads, and QEMU's
    socket is within reach.  A compressed image is never streamed: copy.
    """
    if asked in ('stream', 'auto'):
        return 'copy' if compressed else 'stream'
    return asked


@pytest.fixture(autouse=True)
def method_that_ran(request, monkeypatch):
    """Fail a test whose live snapshot ran another method than it asked.

    Each journal record begun in this process is checked against the
    options in force when it began ([snapdriver] capture_method, [libvirt]
    snapshot_compression; ``method_expected``).  A plan that fell back
    (libnbd missing, QEMU's socket out of reach) would otherwise pass as
    the method asked for.  A test that means a fallback is marked
    ``fallback_allowed``.
    """
    wrong = []
    begin = journal.begin

    def begin_and_check(**fields):
        ran = fields.get('capture_method')
        if ran is not None:  # None: a cold snapshot
            expected = method_expected(
                nova_env.CONF.snapdriver.capture_method,
                bool(nova_env.CONF.libvirt.snapshot_compression))
            if ran != expected:
                wrong.append((expected, ran))
        return begin(**fields)
    monkeypatch.setattr(journal, 'begin', begin_and_check)
    yield
    if not request.node.get_closest_marker('fallback_allowed'):
        assert wrong == [], ('capture method (expected, ran): a live '
                             'snapshot fell back to another method')


@pytest.fixture(scope='session')
def workdir():
    path = tempfile.mkdtemp(prefix='snapdriver-func-')
    let_qemu_in(path, tempfile.gettempdir())
    yield path
    if os.environ.get('SNAPDRIVER_KEEP_WORKDIR'):
        print('functional test workdir kept: %s' % path)
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def qemu_tmp_path(tmp_path, tmp_path_factory):
    """pytest's tmp_path, which QEMU (an unprivileged user) can enter."""
    let_qemu_in(tmp_path, tmp_path_factory.getbasetemp().parent)
    return tmp_path


@pytest.fixture(scope='session')
def compute_host_ready():
    """This machine set up as a non-root compute host; the nova venv.

    libvirtd runs first, as the test bed wants it (on a fresh machine
    nothing has started it yet).  The set-up then may change its socket
    permissions and restart it, so it comes before this session's first
    connection.
    """
    libvirtd.ensure_running()
    return test_compute_host.prepare()


@pytest.fixture(scope='session')
def libvirt_conn(compute_host_ready):
    libvirtd.ensure_running()
    conn = libvirtd.Connection()
    yield conn
    conn.close()


@pytest.fixture(scope='session')
def glance_server(workdir):
    server = test_glance.GlanceServer(os.path.join(workdir, 'glance'))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def glance(glance_server):
    """The running Glance; restarted if a test stopped it."""
    if not glance_server.is_running():
        glance_server.start()
    yield glance_server
    if not glance_server.is_running():
        glance_server.start()


@pytest.fixture(scope='session')
def nova_conf(workdir, glance_server, libvirt_conn):
    return nova_env.configure(workdir, glance_server.url,
                              virt_type=libvirtd.virt_type())


@pytest.fixture(scope='session')
def driver(nova_conf):
    """Our driver, loaded by name and started as nova-compute starts it."""
    return nova_env.load_driver()


@pytest.fixture(scope='session', autouse=True)
def stop_drivers():
    """Stop every driver a test started, or the process never exits."""
    yield
    nova_env.shutdown()


@pytest.fixture(scope='session')
def boot_files():
    return test_guest.build_boot_files(GUEST_CACHE)


@pytest.fixture
def context(nova_conf):
    return nova_env.admin_context()


@pytest.fixture(scope='session')
def booted_image(glance_server):
    """An active image in Glance, the one instances say they booted from.

    As on a real cloud, its record tells how Glance hashes
    (``os_hash_algo``), which the driver learns before each upload.
    """
    client = test_glance.client(glance_server.url)
    image = client.images.create(name='booted', disk_format='raw',
                                 container_format='bare')
    client.images.upload(image['id'], io.BytesIO(b'booted' * 4096))
    return client.images.get(image['id'])


@pytest.fixture
def make_instance(nova_conf, libvirt_conn, boot_files, booted_image):
    """Start instances laid out like nova's; always cleaned up."""
    made = []

    def make(**kwargs):
        kwargs.setdefault('image_ref', booted_image['id'])
        inst = test_instance.NovaInstance(libvirt_conn, boot_files, **kwargs)
        made.append(inst)
        return inst.start()

    yield make
    for inst in made:
        inst.cleanup()


@pytest.fixture
def instance(make_instance):
    return make_instance()


@pytest.fixture
def image_api(nova_conf):
    return nova_glance.API()


@pytest.fixture
def make_image(context, image_api, glance):
    """Create the queued snapshot image the way nova-api creates it."""
    def make(inst, name='snap'):
        return compute_utils.create_image(
            context, inst.obj, name, 'snapshot', image_api)
    return make


class TaskStates(object):
    """Records update_task_state calls as nova's compute manager makes."""

    def __init__(self):
        self.calls = []

    def __call__(self, task_state, expected_state=None):
        self.calls.append((task_state, expected_state))


@pytest.fixture
def task_states():
    return TaskStates()


@pytest.fixture
def snapshots_dir(nova_conf):
    path = nova_env.CONF.libvirt.snapshots_directory
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture
def conf(nova_conf):
    """Override nova/snapdriver options for one test: conf(group, **opts)."""
    overridden = []

    def override(group, **opts):
        for name, value in opts.items():
            nova_env.CONF.set_override(name, value, group)
            overridden.append((name, group))

    yield override
    for name, group in overridden:
        nova_env.CONF.clear_override(name, group)


@pytest.fixture
def glance_client(glance):
    return test_glance.client(glance.url)


@pytest.fixture
def reference(instance, workdir):
    """A copy of the instance's disk as it was before the snapshot."""
    path = os.path.join(workdir, instance.uuid + '.ref')
    subprocess.run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O',
                    'qcow2', instance.disk_path, path], check=True)
    yield path
    os.unlink(path)


@pytest.fixture
def listener():
    """Run a callback on the driver's progress updates during one test."""
    added = []

    def add(callback):
        progress.listen(callback)
        added.append(callback)

    yield add
    for callback in added:
        progress.unlisten(callback)
