"""nova-compute killed in the middle of a snapshot, then recovery.

The snapshot runs in a child process (tests/testbed/child.py) that stops at
a chosen step and is killed there with SIGKILL: no cleanup code runs, as
when nova-compute is OOM-killed.  Then ``nova-snapdriver-manage recover``
runs, as an operator would run it (nova-compute runs the same recovery from
``init_host``), and everything must be repaired: the domain persistent and
running, its disk as before, no block job, no temp files, the image not
left queued, the journal empty.
"""

import os
import signal
import stat
import subprocess
import sys

import libvirt
import pytest

from nova_snapdriver import journal
from tests.testbed import checks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MANAGE = os.path.join(os.path.dirname(sys.executable),
                      'nova-snapdriver-manage')


def run_until(nova_conf, inst, image_id, stop_at, timeout=120):
    """Start a snapshot in a child; return it once it reached ``stop_at``."""
    child = subprocess.Popen(
        [sys.executable, '-m', 'tests.testbed.child', nova_conf,
         inst.ref_json(), image_id, stop_at],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    for line in child.stdout:
        if line.strip() == 'REACHED %s' % stop_at:
            return child
        if line.strip() == 'FINISHED':
            break
    child.kill()
    child.wait()
    raise AssertionError('the snapshot never reached %s' % stop_at)


def kill9(child):
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


def manage(nova_conf, *args):
    return subprocess.run([MANAGE, '--config-file', nova_conf] + list(args),
                          capture_output=True, text=True, timeout=120)


def image_status(glance_client, image_id):
    try:
        return glance_client.images.get(image_id).status
    except Exception as e:
        if 'HTTPNotFound' in type(e).__name__ or '404' in str(e):
            return 'deleted'
        raise


@pytest.mark.parametrize('stop_at', ['overlay', 'undefined', 'copying',
                                     'extracting', 'upload-data'])
def test_killed_snapshot_is_repaired_by_recover(
        stop_at, nova_conf, conf, instance, make_image, glance_client,
        reference, snapshots_dir):
    if stop_at == 'copying':
        # Slow the mirror so it is still running when the child dies.
        conf('snapdriver', block_job_bandwidth=1)
    image = make_image(instance)
    child = run_until(nova_conf, instance, image['id'], stop_at)
    record = os.path.join(journal.directory(), image['id'] + '.json')
    assert os.path.exists(record)
    if stop_at in ('undefined', 'copying'):
        assert not instance.is_persistent()
    if stop_at == 'copying':
        assert checks.block_jobs(instance.lookup()) != {}

    kill9(child)
    result = manage(nova_conf, 'recover')

    assert result.returncode == 0, result.stdout + result.stderr
    assert image['id'] + ': recovered' in result.stdout
    assert instance.is_persistent()
    assert instance.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(instance.lookup()) == {}
    assert checks.same_content(instance.disk_path, reference)
    assert checks.leftovers(snapshots_dir) == []
    assert image_status(glance_client, image['id']) == 'deleted'
    assert journal.paths() == []
    # A second run finds nothing to do.
    again = manage(nova_conf, 'recover')
    assert again.returncode == 0
    assert again.stdout.strip() == 'Nothing to recover.'


def test_snapshot_in_flight_is_left_alone_and_its_record_is_private(
        nova_conf, conf, instance, make_image, reference, snapshots_dir):
    conf('snapdriver', block_job_bandwidth=1)
    image = make_image(instance)
    child = run_until(nova_conf, instance, image['id'], 'copying')
    try:
        record = os.path.join(journal.directory(), image['id'] + '.json')
        assert stat.S_IMODE(os.stat(record).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(journal.directory()).st_mode) == 0o700

        status = manage(nova_conf, 'status')
        assert 'phase copying' in status.stdout
        assert 'in flight' in status.stdout
        result = manage(nova_conf, 'recover')
        assert image['id'] + ': in flight' in result.stdout
        assert not instance.is_persistent(), 'recovery touched a live one'
    finally:
        kill9(child)
    assert manage(nova_conf, 'recover').returncode == 0
    assert instance.is_persistent()
    assert checks.leftovers(snapshots_dir) == []


def test_dry_run_changes_nothing(nova_conf, instance, make_image):
    image = make_image(instance)
    kill9(run_until(nova_conf, instance, image['id'], 'undefined'))

    dry = manage(nova_conf, 'recover', '--dry-run')

    assert 'would do: redefined the domain' in dry.stdout
    assert not instance.is_persistent()
    assert len(journal.paths()) == 1
    assert manage(nova_conf, 'recover').returncode == 0
    assert instance.is_persistent()


def test_corrupt_record_is_reported_and_skipped(nova_conf, instance,
                                                make_image):
    os.makedirs(journal.directory(), mode=0o700, exist_ok=True)
    corrupt = os.path.join(journal.directory(), 'truncated.json')
    with open(corrupt, 'w') as f:
        f.write('{"version": 1, "instance_uu')
    image = make_image(instance)
    kill9(run_until(nova_conf, instance, image['id'], 'undefined'))
    try:
        result = manage(nova_conf, 'recover')

        assert result.returncode == 1
        assert 'corrupt' in result.stdout
        assert image['id'] + ': recovered' in result.stdout
        assert instance.is_persistent()
    finally:
        os.unlink(corrupt)
        journal.discard_lock(corrupt)


def test_nova_compute_start_repairs_an_interrupted_snapshot(
        nova_conf, instance, make_image, reference, snapshots_dir):
    """init_host runs the same recovery, before nova looks at instances."""
    image = make_image(instance)
    kill9(run_until(nova_conf, instance, image['id'], 'undefined'))
    assert not instance.is_persistent()

    from tests.testbed import nova_env
    nova_env.load_driver()   # init_host, as a restarted nova-compute

    assert instance.is_persistent()
    assert instance.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []
