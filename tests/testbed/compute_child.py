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

"""One snapshot as nova-compute takes it, run as the user ``nova``.

    python -m tests.testbed.compute_child DRIVER INSTANCE_JSON IMAGE_ID CONF...

Run by ``tests/testbed/compute_host.py`` through ``runuser -u nova``, with
the compute venv's python.  It parses the CONF files as nova-compute does,
loads DRIVER by name (``snapdriver.SnapLibvirtDriver`` or nova's own
``libvirt.LibvirtDriver``), starts it with ``init_host`` and snapshots the
instance.  Its last line is ``RESULT {"ok": ..., "error": ..., "uid": ...,
"methods": [...]}`` (JSON): ``methods`` holds the capture method of each
journal record the snapshot began (None for a cold snapshot), so a test
can tell the method that ran from one that a fallback picked.  The log
goes to stderr, merged by the caller.
"""

import json
import os
import sys
import traceback

from tests.testbed import nova_env  # noqa: I100  (imports nova.tests first)

from nova import config as nova_config  # noqa: E402
from nova import objects  # noqa: E402


def main(driver_name, instance_json, image_id, *conf_paths):
    args = ['nova-compute']
    for path in conf_paths:
        args += ['--config-file', path]
    nova_config.parse_args(args, configure_db=False)
    objects.register_all()
    import nova_snapdriver.conf  # noqa: F401  registers [snapdriver]
    from tests.testbed import child
    result = {'uid': os.geteuid(), 'ok': False, 'error': None,
              'methods': []}
    child.note_methods(result['methods'])
    child.snapshot_once(driver_name, instance_json, image_id, result)
    if result['error']:
        sys.stderr.write(result['traceback'])
    try:
        nova_env.shutdown()
    except Exception:
        traceback.print_exc()
    print('RESULT ' + json.dumps(result), flush=True)
    sys.stderr.flush()
    # nova's and libvirt's threads must not keep the process alive.
    os._exit(0)


if __name__ == '__main__':
    main(*sys.argv[1:])
