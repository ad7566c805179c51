"""``tools/minicloud tempest``: tempest against the running cloud.

tempest 47 with our plugin (the venv of tools/check-tempest-plugin), its
configuration for this cloud, the run of tempest.api.compute.images,
tempest.scenario.test_snapshot_pattern and our plugin's tests, and the
check that every skipped test is explained in tests/e2e/tempest-skips.txt.

SSH validation is on: tempest runs inside NETNS_EXT (``ip netns exec``),
the one namespace with an address on the guests' network, and reaches the
APIs there through the forwarder (guestnet.py).  The servers get the
provider network's addresses directly ("fixed"): no router, no floating
IP.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from minicloud_lib.config import ADMIN_PASSWORD
from minicloud_lib.config import FLAVORS
from minicloud_lib.config import log
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import NETNS_EXT
from minicloud_lib.config import NETWORK_NAME
from minicloud_lib.config import path
from minicloud_lib.config import REGION
from minicloud_lib.config import SERVICES
from minicloud_lib.config import STATE
from minicloud_lib.config import url
from minicloud_lib import guestnet
from minicloud_lib.processes import run
from minicloud_lib.processes import running
from minicloud_lib import REPO
from minicloud_lib.services import openstack


TEMPEST_VENV = os.path.join(REPO, '.tox', 'tempest-list')
TEMPEST_REGEX = (r'^(tempest\.api\.compute\.images\.|'
                 r'tempest\.scenario\.test_snapshot_pattern\.|'
                 r'nova_snapdriver\.)')
TEMPEST_CONF = """\
[DEFAULT]
log_dir = {state}/log
log_file = tempest-run.log
[auth]
admin_username = admin
admin_password = {admin_password}
admin_project_name = admin
admin_domain_name = Default
use_dynamic_credentials = True
create_isolated_networks = False
[identity]
uri_v3 = {keystone}/v3
auth_version = v3
region = {region}
[identity-feature-enabled]
api_v2 = False
[compute]
image_ref = {image}
image_ref_alt = {image}
flavor_ref = {flavor}
flavor_ref_alt = {flavor_alt}
max_microversion = latest
build_timeout = 180
fixed_network_name = {network}
[compute-feature-enabled]
snapshot = True
pause = True
suspend = True
shelve = True
console_output = False
change_password = False
[service_available]
nova = True
glance = True
neutron = True
cinder = False
swift = False
[network]
# The shared flat provider network: set although no floating IP is made
# (test_snapshot_pattern skips without it; "fixed" connects directly).
public_network_id = {network_id}
project_networks_reachable = True
shared_physical_network = True
[network-feature-enabled]
floating_ips = False
[validation]
run_validation = True
connect_method = fixed
auth_method = keypair
network_for_ssh = {network}
ip_version_for_ssh = 4
image_ssh_user = root
# nova generates RSA keypairs; tempest 47 defaults to ecdsa.
ssh_key_type = rsa
ssh_timeout = 180
connect_timeout = 20
[scenario]
# The guest's root home is the disk's ext4 partition (/tmp is memory).
target_dir = /root
[image-feature-enabled]
api_v2 = True
[snapdriver_feature_enabled]
live_snapshot = True
paused_snapshot = True
stopped_snapshot = True
boot_from_snapshot = True
"""


def cmd_tempest(args):
    """Run tempest's compute image tests and our plugin's on the cloud."""
    if running() != list(SERVICES):
        raise MinicloudError('the minicloud is not (fully) up; run '
                             '"tools/minicloud up" first')
    # Creates the venv (tempest 47 + this checkout, no nova) if needed and
    # checks that tempest lists our plugin's tests.
    res = subprocess.run([os.path.join(REPO, 'tools', 'check-tempest-plugin'),
                          TEMPEST_VENV], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         timeout=600)
    if res.returncode:
        raise MinicloudError('tools/check-tempest-plugin failed:\n%s'
                             % res.stdout[-3000:])
    work = path('tempest')
    for d in (work, path('tempest-etc')):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(path('tempest-etc'))
    tempest = os.path.join(TEMPEST_VENV, 'bin', 'tempest')
    env = dict(os.environ, PATH=os.path.join(TEMPEST_VENV, 'bin') + ':' +
               os.environ['PATH'])
    run([tempest, 'init', '--config-dir', path('tempest-etc'),
         '--workspace-path', path('tempest-workspace.yaml'), work],
        'tempest', env=env)
    ids = {f['Name']: f['ID'] for f in openstack('flavor', 'list')}
    image = openstack('image', 'show', 'minicloud-ssh')['id']
    with open(os.path.join(work, 'etc', 'tempest.conf'), 'w') as f:
        f.write(TEMPEST_CONF.format(
            state=STATE, admin_password=ADMIN_PASSWORD,
            keystone=url('keystone'), region=REGION, image=image,
            flavor=ids[FLAVORS[0][0]], flavor_alt=ids[FLAVORS[1][0]],
            network=NETWORK_NAME, network_id=guestnet.network_id()))
    cmd = ['ip', 'netns', 'exec', NETNS_EXT, tempest, 'run',
           '--concurrency', str(args.concurrency), '--regex', args.regex]
    log('running %s', ' '.join(cmd))
    t0 = time.monotonic()
    with open(path('log', 'tempest.log'), 'w') as out:
        # Its own process group: on a timeout its stestr workers and their
        # SSH sessions go too, and leave NETNS_EXT free to delete.
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            raise MinicloudError('tempest ran over %d s; killed'
                                 % args.timeout)
    with open(path('log', 'tempest.log')) as f:
        output = f.read()
    for line in output.splitlines():
        if ('... SKIPPED' in line or '... FAILED' in line
                or line.startswith((' - Passed', ' - Skipped', ' - Failed',
                                    ' - Unexpected', ' - Expected'))):
            print(line)
    log('tempest exited %d after %.0f s (full output: %s)',
        proc.returncode, time.monotonic() - t0, path('log', 'tempest.log'))
    if proc.returncode:
        print(output[-6000:])
        return proc.returncode
    unexplained = unexplained_skips(output)
    if unexplained:
        print('minicloud: %d skipped test(s) not explained in %s:\n  %s'
              % (len(unexplained), TEMPEST_SKIPS, '\n  '.join(unexplained)))
        return 1
    return 0


TEMPEST_SKIPS = os.path.join(REPO, 'tests', 'e2e', 'tempest-skips.txt')


def unexplained_skips(output):
    """Skipped tests of a tempest run that tempest-skips.txt lacks."""
    with open(TEMPEST_SKIPS) as f:
        allowed = {line.split()[0] for line in f
                   if line.strip() and not line.startswith('#')}
    skipped = re.findall(r'^\{\d+\} (\S+?)(?:\[\S*\])? \.\.\. SKIPPED',
                         output, re.M)
    return sorted(set(skipped) - allowed)
