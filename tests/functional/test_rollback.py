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

"""A host goes back to nova's in-tree driver, and comes back.

As upgrade.rst tells an operator: snapshots ran with this driver, one was
interrupted (nova-compute killed mid-stream).  ``purge`` refuses while its
record waits for repair.  The host switches to ``libvirt.LibvirtDriver``,
which starts cleanly beside what the interrupted snapshot left and
snapshots with nova's own sequence.  Switched back, this driver's start
(``init_host``) repairs the interrupted one; then ``purge`` removes the
driver's state, and nothing of it is left.
"""

import os
import time

import libvirt

from nova_snapdriver import journal
from tests.testbed import checks
from tests.testbed import child as test_child
from tests.testbed import recover

IN_TREE = {'DEFAULT': {'compute_driver': 'libvirt.LibvirtDriver'}}


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'no %s in %d s' % (what, timeout)
        time.sleep(0.2)


def test_back_to_nova_in_tree_and_back_again(
        nova_conf, make_instance, make_image, glance_client, snapshots_dir,
        workdir):
    interrupted = make_instance()
    other = make_instance()
    reference = checks.reference_copy(interrupted, workdir)
    image = make_image(interrupted)
    test_child.kill9(test_child.run_until(
        nova_conf, interrupted, image['id'], 'streaming',
        options={'snapdriver': {'capture_method': 'stream'}}))
    assert len(journal.paths()) == 1

    refused = recover.manage(nova_conf, 'purge')
    assert refused.returncode == 1
    assert 'Refused: 1 snapshot record(s)' in refused.stdout
    assert image['id'] + '.json' in refused.stdout

    # nova's in-tree driver starts cleanly and snapshots, leaving ours be.
    in_tree = test_child.serve(nova_conf, options=IN_TREE)
    test_child.kill9(in_tree)
    in_tree_image = make_image(other)
    result = test_child.run(nova_conf, other, in_tree_image['id'],
                            options=IN_TREE)
    assert result['ok'], '%s\n%s' % (result['error'], result['traceback'])
    assert result['methods'] == []  # nova's snapshot: no record of ours
    assert glance_client.images.get(in_tree_image['id']).status == 'active'
    assert len(journal.paths()) == 1

    # Back to this driver: its start repairs the interrupted snapshot.
    ours = test_child.serve(nova_conf)
    try:
        wait_for(lambda: journal.paths() == [], 'repair')
    finally:
        test_child.kill9(ours)
    assert interrupted.is_persistent()
    assert interrupted.state() == libvirt.VIR_DOMAIN_RUNNING
    domain = interrupted.lookup()
    assert domain.jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE
    assert checks.same_content(interrupted.disk_path, reference)
    assert recover.image_status(glance_client, image['id']) == 'deleted'

    purged = recover.manage(nova_conf, 'purge')
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert 'Removed %s' % journal.directory() in purged.stdout
    assert not os.path.exists(journal.directory())
    assert checks.leftovers(snapshots_dir) == []
    os.unlink(reference)
