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

"""``tools/minicloud/minicloud tempest``: tempest against the running cloud.

tempest 47 with our plugin (the venv of tools/tempest/check-tempest-plugin),
its
configuration for this cloud, the run of tempest.api.compute.images,
tempest.scenario.test_snapshot_pattern and our plugin's tests, and the
checks of its result: every skipped test is explained in
tests/e2e/tempest-skips.txt, no class (setUpClass) or module was skipped
as a whole, and every test that tempest lists for the run's regex has a
result.

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
# tempest's compute image tests and snapshot scenario, its other callers
# of the driver's snapshot() (createBackup in both classes that test it,
# shelve of a running and of a paused server, deleting a shelved server,
# the shelve scenario over SSH), and our plugin's tests.
TEMPEST_REGEX = (r'^(tempest\.api\.compute\.images\.|'
                 r'tempest\.scenario\.test_snapshot_pattern\.|'
                 r'tempest\.api\.compute\.servers\.test_server_actions\.'
                 r'\w+\.test_(create_backup|shelve_unshelve_server|'
                 r'shelve_paused_server)\[|'
                 r'tempest\.api\.compute\.servers\.test_delete_server\.'
                 r'\w+\.test_delete_server_while_in_shelved_state\[|'
                 r'tempest\.scenario\.test_shelve_instance\.'
                 r'TestShelveInstance\.test_shelve_instance\[|'
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
# On an SSH failure tempest logs the guest's console (log_console_output):
# the test guest says there whether it got a DHCP lease and SSH is up.
console_output = True
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
                             '"tools/minicloud/minicloud up" first')
    # Creates the venv (tempest 47 + this checkout, no nova) if needed and
    # checks that tempest lists our plugin's tests.
    res = subprocess.run([os.path.join(REPO, 'tools', 'tempest',
                                       'check-tempest-plugin'),
                          TEMPEST_VENV], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         timeout=600)
    if res.returncode:
        raise MinicloudError('tools/tempest/check-tempest-plugin failed:\n%s'
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
    # The tests the run must report, each with a result: a class whose
    # setUpClass skips (or a module, or a lost worker) reports none of its
    # own, and would otherwise pass unnoticed.  Listing needs no cloud.
    res = subprocess.run([tempest, 'run', '--list-tests', '--regex',
                          args.regex], cwd=work, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, timeout=600)
    if res.returncode:
        raise MinicloudError('tempest run --list-tests failed:\n%s%s'
                             % (res.stdout[-3000:], res.stderr[-3000:]))
    expected = listed_tests(res.stdout, args.regex)
    log('tempest lists %d tests for %s', len(expected), args.regex)
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
    problems = check_run(output, expected, load_allowed_skips())
    if problems:
        print('minicloud: tempest passed, but the run is not accepted:\n  %s'
              % '\n  '.join(problems))
        return 1
    return 0


TEMPEST_SKIPS = os.path.join(REPO, 'tests', 'e2e', 'tempest-skips.txt')

# What tempest run prints of each result: stestr's subunit-trace
# (stestr/subunit_trace.py show_outcome, stestr 4.2.1 as pinned by
# tools/tempest/tempest-constraints.txt), one line a test:
#   {0} tempest.api...ImagesTestJSON.test_x [1.234567s] ... ok
#   {1} tempest.api...ImagesTestJSON.test_y [0.5s] ... FAILED
#   {0} tempest.api...ImagesTestJSON.test_z ... SKIPPED: <reason>
# (no duration on a skip, no ': <reason>' if the reason is empty; other
# statuses as '... <status>').  The id is the subunit test id with its
# first '[...]' (tempest's tags: id-<uuid>, smoke) cut out.
TRACE_LINE = re.compile(
    r'^\{\d+\} (?P<id>.+?)(?: \[[^\]\n]*\])? \.\.\. '
    r'(?:(?P<skip>SKIPPED)(?:: (?P<reason>.*))?|(?P<status>\S+))$', re.M)

# A setUpClass that raises SkipTest (tempest's skip_checks, or anything
# else in tempest's BaseTestCase.setUpClass) is reported by unittest's
# TestSuite._handleClassSetUp as ONE skipped pseudo-test, an _ErrorHolder
# whose id is 'setUpClass (<module>.<class>)', and none of the class's
# tests is run or reported at all; a setUpModule skip likewise as
# 'setUpModule (<module>)'.  A real test id has no space.
FIXTURE_ID = re.compile(r'^(?P<fixture>\w+) \((?P<parent>[\w.]+)\)$')


def strip_tags(test_id):
    """A test id as subunit-trace prints it: its first '[...]' cut out.

    stestr's subunit_trace.cleanup_test_name; tempest's ids are
    'module.Class.test_x[id-<uuid>,smoke]'.
    """
    start = test_id.find('[')
    end = test_id.find(']')
    if start > 0 and end > start:
        test_id = test_id[:start] + test_id[end + 1:]
    return test_id


def parse_results(output):
    """(test id, status, reason) of each result line of a tempest run.

    status is 'ok', 'FAILED', 'skip' or whatever else subunit-trace
    printed; reason is the skip's reason ('' if none; its first line).
    """
    results = []
    for m in TRACE_LINE.finditer(output):
        if m.group('skip'):
            results.append((strip_tags(m.group('id')), 'skip',
                            (m.group('reason') or '').strip()))
        else:
            results.append((strip_tags(m.group('id')), m.group('status'),
                            ''))
    return results


def load_allowed_skips(path=TEMPEST_SKIPS):
    """The test ids tempest-skips.txt allows to skip (its first words)."""
    with open(path) as f:
        return {strip_tags(line.split()[0]) for line in f
                if line.strip() and not line.startswith('#')}


def class_level_skips(results):
    """(what, reason) of each skip of a whole class (or module).

    what is e.g. 'setUpClass (tempest.api.compute.images.test_images.
    ImagesTestJSON)'.  tempest-skips.txt cannot allow these: it lists
    tests, and a class that cannot run here belongs out of the run's
    --regex, not in a skip that hides all its tests.

    A class split over workers (no group_regex) is skipped once in each:
    it is given once.
    """
    return sorted({(test_id, reason) for test_id, status, reason in results
                   if status == 'skip' and FIXTURE_ID.match(test_id)})


def unexplained_skips(results, allowed):
    """Skipped tests of a tempest run that tempest-skips.txt lacks.

    Class- and module-level skips are class_level_skips', not these.
    """
    return sorted({test_id for test_id, status, _ in results
                   if status == 'skip' and not FIXTURE_ID.match(test_id)
                   and test_id not in allowed})


def listed_tests(listing, regex):
    """The test ids of 'tempest run --list-tests --regex REGEX' output.

    stestr's list command prints one id a line (with tempest's tags);
    anything else on its output (a warning) is not an id: ids have no
    space and match REGEX, as stestr selects them (re.search).
    """
    pattern = re.compile(regex)
    return sorted({strip_tags(line.strip()) for line in listing.splitlines()
                   if re.fullmatch(r'\S+', line.strip())
                   and pattern.search(line.strip())})


def missing_tests(expected, results):
    """The expected test ids that got no result line at all."""
    seen = {test_id for test_id, _, _ in results}
    return sorted(set(expected) - seen)


def check_run(output, expected, allowed):
    """Why a tempest run that exited 0 is not accepted ([] if it is).

    output is what tempest run printed; expected the ids it listed for
    the same --regex (listed_tests), or None not to check them; allowed
    the ids tempest-skips.txt explains (load_allowed_skips).
    """
    results = parse_results(output)
    problems = []
    for what, reason in class_level_skips(results):
        m = FIXTURE_ID.match(what)
        problems.append('%s %s skipped as a whole in %s (none of its tests '
                        'ran): %s' % ('module' if 'Module' in m.group(
                            'fixture') else 'class', m.group('parent'),
                            m.group('fixture'), reason or '(no reason)'))
    for test_id in unexplained_skips(results, allowed):
        problems.append('skipped, not explained in %s: %s'
                        % (TEMPEST_SKIPS, test_id))
    if expected is not None:
        if not expected:
            problems.append('tempest listed no test for the regex')
        for test_id in missing_tests(expected, results):
            problems.append('listed but no result (not run): %s' % test_id)
    return problems
