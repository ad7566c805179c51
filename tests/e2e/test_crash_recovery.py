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

"""nova-compute killed in the middle of a live snapshot, on the real cloud.

nova-compute is restarted with a bandwidth limit on the block copy, so that
the copy of a writing guest's disk lasts seconds.  While our journal says
the snapshot is copying and libvirt says the domain is transient (the
window in which nova's in-tree driver, killed, leaves the domain undefined
for good), the whole nova-compute process group gets SIGKILL.  Then it is
started again with its usual configuration, as an operator or an init
system would, and its ``init_host`` must have repaired everything: the
domain persistent and running, the guest writing, no block job, no staging
files, no journal record, the unfinished image deleted, and the server
ACTIVE with no task state.
"""

import datetime
import glob
import json
import os
import signal

import libvirt
import pytest

from tests.e2e.conftest import CLIError
from tests.e2e.conftest import console_marks
from tests.e2e.conftest import domain_info
from tests.e2e.conftest import minicloud
from tests.e2e.conftest import openstack
from tests.e2e.conftest import sdk
from tests.e2e.conftest import STATE
from tests.e2e.conftest import wait_for
from tests.e2e.conftest import wait_for_status
from tests.testbed import guest as test_guest

JOURNAL = os.path.join(STATE, 'nova', 'snapdriver-journal')
SNAPSHOTS = os.path.join(STATE, 'nova', 'instances', 'snapshots')


def journal_records():
    records = []
    for name in glob.glob(os.path.join(JOURNAL, '*.json')):
        try:
            with open(name) as f:
                records.append(json.load(f))
        except (OSError, ValueError):  # being replaced right now
            pass
    return records


def kill_compute():
    """SIGKILL nova-compute's whole process group, as an OOM kill would."""
    pid = minicloud.pid_of('nova-compute')
    assert pid, 'nova-compute is not running'
    os.killpg(pid, signal.SIGKILL)
    wait_for('nova-compute to die', lambda: not minicloud.pid_of(
        'nova-compute'), timeout=30)


def start_compute(*extra_config_files):
    """Start nova-compute; return once it reports to nova again."""
    started = datetime.datetime.now(datetime.timezone.utc).replace(
        tzinfo=None)
    minicloud.start_compute(*extra_config_files)

    def reporting():
        if minicloud.critical_in_log('nova-compute'):
            raise AssertionError(minicloud.log_tail('nova-compute'))
        for svc in sdk().compute.services(binary='nova-compute'):
            updated = datetime.datetime.fromisoformat(svc.updated_at)
            if svc.state == 'up' and updated > started:
                return True
        return False
    wait_for('nova-compute to report after its start', reporting,
             timeout=180)


@pytest.fixture
def slow_copy(tmp_path):
    """nova-compute with a 1 MiB/s rebase copy, for the test's duration.

    rebase, whatever the cloud's capture_method: the test kills
    nova-compute while the domain is transient.
    """
    conf = tmp_path / 'slow-copy.conf'
    conf.write_text('[snapdriver]\ncapture_method = rebase\n'
                    'block_job_bandwidth = 1\n')
    kill_compute()
    start_compute(str(conf))
    yield
    # Whatever the test did, leave nova-compute as the cloud configures it.
    if minicloud.pid_of('nova-compute'):
        kill_compute()
    start_compute()


def test_nova_compute_killed_mid_snapshot_is_repaired_when_it_restarts(
        resources, slow_copy):
    server = resources.boot('e2e-crash', min_marks=100)
    name = sdk().compute.get_server(server['id']).instance_name

    image = openstack('server', 'image', 'create', '--name',
                      'e2e-crash-snap', server['id'])
    resources.images.append(image['id'])
    wait_for('the copy to run with the domain transient',
             lambda: (any(r['phase'] == 'copying' for r in journal_records())
                      and not domain_info(name)[0]),
             timeout=120, interval=0.05)
    kill_compute()

    # What nova's in-tree driver would leave for good: a transient domain.
    persistent, state, _job = domain_info(name)
    assert (persistent, state) == (False, libvirt.VIR_DOMAIN_RUNNING)
    assert journal_records(), 'the journal lost the snapshot'

    start_compute()

    persistent, state, job = domain_info(name)
    assert (persistent, state, job) == (True, libvirt.VIR_DOMAIN_RUNNING, {})
    assert journal_records() == []
    assert os.listdir(SNAPSHOTS) == []
    shown = wait_for_status(server['id'], 'ACTIVE')
    assert shown['OS-EXT-STS:task_state'] is None
    # The unfinished image was deleted, not left queued.
    try:
        status = openstack('image', 'show', image['id'])['status']
    except CLIError as e:
        assert 'No Image found' in str(e) or '404' in str(e), e
    else:
        assert status == 'deleted', status
    # The guest's disk is intact (read while paused: a guest writing
    # during the read could look torn), and the guest goes on writing.
    openstack('server', 'pause', server['id'], parse=False)
    wait_for_status(server['id'], 'PAUSED')
    disk = os.path.join(STATE, 'nova', 'instances', server['id'], 'disk')
    written = test_guest.check_consistent(
        test_guest.read_markers(disk, 'qcow2'))
    assert written >= 100
    openstack('server', 'unpause', server['id'], parse=False)
    wait_for_status(server['id'], 'ACTIVE')
    wait_for('the guest to write on',
             lambda: console_marks(server['id'])[0] > written)
