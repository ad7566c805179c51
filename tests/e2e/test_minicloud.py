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

"""The minicloud script itself, and how its nova-compute runs."""

import collections
import grp
import os
import pwd
import re
import subprocess

from tests.e2e.conftest import CALL_TIMEOUT
from tests.e2e.conftest import minicloud
from tests.e2e.conftest import openstack
from tests.e2e.conftest import REPO

ROOTWRAP = ['sudo', 'nova-rootwrap', '/etc/nova/rootwrap.conf']


def run_minicloud(*args):
    return subprocess.run([os.path.join(REPO, 'tools', 'minicloud',
                                        'minicloud')] + list(args),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          timeout=CALL_TIMEOUT)


def test_a_second_up_is_refused_and_changes_nothing():
    before = run_minicloud('status')
    assert before.returncode == 0, before.stdout + before.stderr

    again = run_minicloud('up')

    assert again.returncode == 1
    assert 'the minicloud is already up' in again.stderr
    assert 'tools/minicloud/minicloud down' in again.stderr
    after = run_minicloud('status')
    assert after.returncode == 0
    # Same services with the same pids: nothing was restarted.
    assert after.stdout == before.stdout


Process = collections.namedtuple('Process',
                                 'pid ppid pgid uids gids groups cmdline')


def process(pid):
    """What /proc says of a process: ids, parent, group, command line."""
    with open('/proc/%d/status' % pid) as f:
        status = dict(line.split(':', 1) for line in f if ':' in line)
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    with open('/proc/%d/cmdline' % pid, 'rb') as f:
        cmdline = f.read().decode('utf-8', 'replace').split('\0')[:-1]
    return Process(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]),
                   uids=set(map(int, status['Uid'].split())),
                   gids=set(map(int, status['Gid'].split())),
                   groups=set(map(int, status['Groups'].split())),
                   cmdline=cmdline)


def process_group(pgid):
    members = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                proc = process(int(entry))
            except (OSError, KeyError, IndexError):  # gone meanwhile
                continue
            if proc.pgid == pgid:
                members.append(proc)
    return members


def started_through_rootwrap(proc, top):
    """True if proc, or one of its parents below top, is rootwrap's."""
    while proc.pid != top and proc.pid > 1:
        if proc.cmdline[:3] == ROOTWRAP:
            return True
        try:
            proc = process(proc.ppid)
        except OSError:
            return False
    return False


def privsep_helpers():
    """The command lines of the privsep helpers nova-compute started."""
    with open(os.path.join(minicloud.STATE, 'log', 'nova-compute.log'),
              errors='replace') as f:
        log = f.read()
    assert 'FailedToDropPrivileges' not in log
    return re.findall(r'Running privsep helper: \[([^]]*)\]', log)


def test_nova_compute_runs_as_nova_and_reaches_root_only_through_rootwrap(
        resources):
    if not privsep_helpers():
        # Run on its own right after "up": make nova-compute use privsep
        # (the console log of a file console is read through it).
        server = resources.boot('e2e-privsep', image='minicloud-idle')
        openstack('console', 'log', 'show', server['id'], parse=False)
    compute = minicloud.pid_of('nova-compute')
    nova = pwd.getpwnam(minicloud.COMPUTE_USER)

    proc = process(compute)

    # Real, effective, saved and filesystem ids are all nova's; libvirtd's
    # socket is reached through the libvirt group.
    assert proc.uids == {nova.pw_uid}, proc
    assert proc.gids == {nova.pw_gid}, proc
    assert grp.getgrnam('libvirt').gr_gid in proc.groups, proc
    assert 0 not in proc.groups, proc
    assert proc.cmdline[-2:] == ['--config-file', minicloud.COMPUTE_CONF]
    # Anything of nova-compute's that runs as root is rootwrap's: a command
    # under "sudo nova-rootwrap /etc/nova/rootwrap.conf", or a privsep
    # daemon that such a command started (its parent has exited by then).
    for member in process_group(compute):
        if 0 not in member.uids:
            continue
        if started_through_rootwrap(member, compute):
            continue
        assert 'privsep-helper' in ' '.join(member.cmdline[:2]), member
        assert member.cmdline[2:4] == ['--config-file',
                                       minicloud.COMPUTE_CONF], member
    # Every privsep helper nova-compute started went through rootwrap.
    helpers = privsep_helpers()
    assert helpers, 'nova-compute never started privsep'
    for helper in helpers:
        assert helper.startswith(
            "'sudo', 'nova-rootwrap', '/etc/nova/rootwrap.conf', "
            "'privsep-helper', '--config-file', '%s', '--privsep_context'"
            % minicloud.COMPUTE_CONF), helper


def test_root_namespace_never_had_a_guest_address_or_route():
    """The network rule, while the cloud is up (down checks it again).

    Guest traffic stays inside the namespaces the cloud made: the root
    namespace has no address or route in the guest networks now, and the
    netwatch log shows it never had one since up.
    """
    from minicloud_lib import network
    from minicloud_lib import processes

    # The proof rests on netwatch having watched since up.
    assert processes.pid_of(network.NETWATCH)
    assert network.root_ns_violations() == []
