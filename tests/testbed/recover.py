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

"""``nova-snapdriver-manage`` as an operator runs it, and what recovery leaves.

``recover_all`` runs ``recover`` after a killed snapshot and checks that
everything is repaired: the domain persistent and running, its disk as
before, no block job, no temp file, the image not left queued, the journal
empty, and a second run finding nothing.
"""

import os
import subprocess
import sys

import libvirt

from nova_snapdriver import journal
from tests.testbed import checks

MANAGE = os.path.join(os.path.dirname(sys.executable),
                      'nova-snapdriver-manage')


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


def journal_files():
    try:
        return sorted(os.listdir(journal.directory()))
    except FileNotFoundError:
        return []


def recover_all(nova_conf, instance, image, glance_client, reference,
                snapshots_dir):
    """Run recover: all is repaired, and a second run finds nothing."""
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
    assert journal_files() == []  # no lock, no temp file either
    again = manage(nova_conf, 'recover')
    assert again.returncode == 0
    assert again.stdout.strip() == 'Nothing to recover.'
