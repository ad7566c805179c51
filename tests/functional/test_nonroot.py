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

"""Snapshots as a real compute host takes them: nova-compute as ``nova``.

The driver runs in a child process as the system user ``nova`` (in the
``libvirt`` group, root only through ``sudo nova-rootwrap`` and privsep
started through it), on a host laid out unlike nova's defaults: its own
instances_path, ``[image_cache] subdirectory_name = _cache`` and a
snapshots directory outside instances_path (``tests/testbed/
compute_host.py``).  Every capture method, live and cold, qcow2 and raw
output, must give an image equal to the disk and leave the instance as it
was, with nothing left that nova does not own.  A disk whose header points
outside its chain is refused and nothing outside is read; a disk of an
older nova, whose header names no backing format, snapshots fine; nova's
own driver, run the same way, shows that this host works for nova too.
"""

import os
import subprocess

import libvirt
import pytest

from tests.testbed import checks
from tests.testbed import compute_host as test_compute_host

METHODS = ('rebase', 'copy', 'backup', 'stream', 'auto')
SECRET = b'OTHER-TENANT-DATA-' * 64


@pytest.fixture(scope='session')
def compute_host(compute_host_ready, glance_server):
    host = test_compute_host.ComputeHost(glance_server.url)
    host.venv = compute_host_ready
    host.setup()
    yield host
    host.cleanup()


@pytest.fixture
def nova_instance(compute_host, make_instance):
    def make(**kwargs):
        return make_instance(**dict(compute_host.instance_kwargs(),
                                    **kwargs))
    return make


def assert_image_is_the_disk(glance_client, image_id, fmt, reference,
                             workdir):
    image = glance_client.images.get(image_id)
    assert image.status == 'active'
    assert image.disk_format == fmt
    local = checks.download(glance_client, image_id,
                            os.path.join(workdir, image_id + '.img'))
    try:
        assert 'backing-filename' not in checks.image_info(local, fmt)
        assert checks.same_content(local, reference, fmt, 'qcow2')
    finally:
        os.unlink(local)


def assert_host_as_before(host, inst, state=libvirt.VIR_DOMAIN_RUNNING):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == state
    assert checks.block_jobs(inst.lookup()) == {}
    assert checks.leftovers(host.snapshots_directory) == []
    journal = os.path.join(host.root, 'state', 'snapdriver-journal')
    assert checks.leftovers(journal) == []
    # Nothing root made where nova works: nova can always clean up.
    assert host.not_nova_owned(host.snapshots_directory) == []
    assert host.not_nova_owned(journal) == []


# Each method in qcow2; raw too where the format changes which files nova
# opens (backup's target, the stream writer).  rebase and copy convert to
# raw with the same files, and auto is stream on this host.
@pytest.mark.parametrize('method,fmt', [
    (method, 'qcow2') for method in METHODS] + [
    ('backup', 'raw'), ('stream', 'raw')])
def test_live_snapshot_as_nova(method, fmt, compute_host, nova_instance,
                               make_image, glance_client, workdir):
    inst = nova_instance()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)

    result = compute_host.snapshot(
        inst, image['id'], snapdriver={'capture_method': method},
        libvirt={'snapshot_image_format': fmt})

    assert result.ok, result
    assert result.result['uid'] == compute_host.uid
    # The method asked for ran (auto: stream on this host), no fallback.
    assert result.methods == ['stream' if method == 'auto' else method], \
        result
    assert_image_is_the_disk(glance_client, image['id'], fmt, reference,
                             workdir)
    assert checks.same_content(inst.disk_path, reference)
    assert_host_as_before(compute_host, inst)
    os.unlink(reference)


@pytest.mark.parametrize('method', ['backup', 'copy'])
def test_compressed_live_snapshot_as_nova(method, compute_host,
                                          nova_instance, make_image,
                                          glance_client, workdir):
    """A compressed backup is converted once more: a second file nova reads."""
    inst = nova_instance()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)

    result = compute_host.snapshot(
        inst, image['id'], snapdriver={'capture_method': method},
        libvirt={'snapshot_compression': 'true'})

    assert result.ok, result
    assert result.methods == [method], result
    assert_image_is_the_disk(glance_client, image['id'], 'qcow2', reference,
                             workdir)
    assert_host_as_before(compute_host, inst)
    os.unlink(reference)


@pytest.mark.parametrize('fmt', ['qcow2', 'raw'])
def test_cold_snapshot_as_nova(fmt, compute_host, nova_instance, make_image,
                               glance_client, workdir):
    inst = nova_instance()
    inst.lookup().destroy()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)

    result = compute_host.snapshot(
        inst, image['id'], libvirt={'snapshot_image_format': fmt})

    assert result.ok, result
    # The default (auto) streams a shut-off disk: qemu-nbd run by nova.
    assert result.methods == ['stream'], result
    assert_image_is_the_disk(glance_client, image['id'], fmt, reference,
                             workdir)
    assert_host_as_before(compute_host, inst, libvirt.VIR_DOMAIN_SHUTOFF)
    os.unlink(reference)


@pytest.mark.parametrize('live', [True, False], ids=['live', 'cold'])
def test_disk_without_backing_format_snapshots(live, compute_host,
                                               nova_instance, make_image,
                                               glance_client, workdir):
    """A disk of an older nova: its header names no backing format."""
    inst = nova_instance(backing_format_in_header=False)
    info = checks.image_info(inst.disk_path, 'qcow2')
    assert 'backing-filename-format' not in info
    if not live:
        inst.lookup().destroy()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)

    result = compute_host.snapshot(inst, image['id'],
                                   snapdriver={'capture_method': 'rebase'})

    assert result.ok, result
    assert_image_is_the_disk(glance_client, image['id'], 'qcow2', reference,
                             workdir)
    assert_host_as_before(compute_host, inst, libvirt.VIR_DOMAIN_RUNNING
                          if live else libvirt.VIR_DOMAIN_SHUTOFF)
    os.unlink(reference)


def plant_backing(inst, target):
    """Point the disk's header at ``target`` as its raw backing file."""
    subprocess.run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'raw',
                    '-b', target, inst.disk_path], check=True)


def plant_data_file(inst, target):
    """Replace the disk by a qcow2 whose data lives in ``target``.

    Every cluster is mapped onto ``target`` (raw data file, metadata
    preallocated).  Creating it zeroes ``target``, so the other tenant's
    data is written back afterwards.
    """
    os.unlink(inst.disk_path)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                    'data_file=%s,data_file_raw=on,preallocation=metadata'
                    % target, inst.disk_path, str(inst.disk_size)],
                   check=True)
    with open(target, 'r+b') as f:
        f.write(SECRET)


@pytest.fixture
def secret_file(compute_host):
    """Another tenant's data, outside the chain, yet readable by nova.

    Readable by nova on purpose: a refusal then comes from the driver's
    check, not from the file's mode.
    """
    path = os.path.join(compute_host.root, 'other-tenant.raw')
    with open(path, 'wb') as f:
        f.write(SECRET)
        f.truncate(64 * 1024 * 1024)
    os.chmod(path, 0o644)
    yield path
    os.unlink(path)


@pytest.mark.parametrize('plant', [plant_backing, plant_data_file],
                         ids=['backing-file', 'data-file'])
def test_header_pointing_outside_the_chain_is_never_read(
        plant, compute_host, nova_instance, make_image, glance_client,
        secret_file, workdir):
    inst = nova_instance()
    inst.lookup().destroy()
    plant(inst, secret_file)
    # Followed, that header gives the other tenant's bytes: this is what
    # the snapshot must not do.
    followed = os.path.join(compute_host.root, 'followed.raw')
    proc = compute_host.as_nova('qemu-img', 'convert', '-f', 'qcow2', '-O',
                                'raw', inst.disk_path, followed)
    assert proc.returncode == 0, proc.stdout
    with open(followed, 'rb') as f:
        assert SECRET in f.read(len(SECRET) * 2)
    os.unlink(followed)
    image = make_image(inst)

    result = compute_host.snapshot(inst, image['id'])

    assert not result.ok, result
    assert 'UnsafeDiskChain' in result.error
    assert 'Refusing to read %s' % inst.disk_path in result.error
    assert glance_client.images.get(image['id']).status == 'queued'
    assert SECRET[:32].decode() not in result.output
    assert_host_as_before(compute_host, inst, libvirt.VIR_DOMAIN_SHUTOFF)


def test_nova_in_tree_snapshots_on_the_same_host(
        compute_host, nova_instance, make_image, glance_client, workdir):
    """The host is right for nova too: its live snapshot uses privsep."""
    inst = nova_instance()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)

    result = compute_host.snapshot(inst, image['id'],
                                   driver='libvirt.LibvirtDriver')

    assert result.ok, result
    assert_image_is_the_disk(glance_client, image['id'], 'qcow2', reference,
                             workdir)
    assert inst.is_persistent()
    os.unlink(reference)


def manage(compute_host, *args):
    return compute_host.as_nova(
        os.path.join(compute_host.venv, 'bin', 'nova-snapdriver-manage'),
        '--config-file', compute_host.conf, *args)


def test_manage_check_as_nova(compute_host):
    proc = manage(compute_host, 'check')

    assert proc.returncode == 0, proc.stdout
    assert 'OK   qemu-img as nova:' in proc.stdout
    assert 'OK   no root commands:' in proc.stdout
    assert 'OK   snapshots directory access: %s: writable by nova' % (
        compute_host.snapshots_directory) in proc.stdout


def test_manage_check_fails_on_stale_filters(compute_host):
    stale = '/etc/nova/rootwrap.d/snapdriver.filters'
    with open(stale, 'w') as f:
        f.write('[Filters]\n')
    try:
        proc = manage(compute_host, 'check')
    finally:
        os.unlink(stale)

    assert proc.returncode == 1, proc.stdout
    assert 'FAIL no root commands: remove %s' % stale in proc.stdout
