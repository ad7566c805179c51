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

"""Run one snapshot in a child process, to be killed at a chosen step.

    python -m tests.testbed.child NOVA_CONF INSTANCE_JSON IMAGE_ID STOP_AT

``run_until`` and ``kill9`` are the parent's side.  Options the parent
overrides for the test reach the child as JSON in SNAPDRIVER_CHILD_OPTIONS
({group: {option: value}}).

The child configures nova from NOVA_CONF exactly as the tests' own process
did, loads the driver by name (init_host included) and snapshots the
instance described by INSTANCE_JSON.  When the snapshot reaches STOP_AT, a
journal step ('overlay', 'undefined', 'copying', 'extracting',
'uploading') or 'upload-data' (the first bytes sent to Glance), it prints
"REACHED <STOP_AT>" and waits, so the parent can kill -9 it right there.

``serve`` starts a child that only starts the driver, as nova-compute
does (``init_host``, then periodic recovery), and runs until killed.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

from tests.testbed import nova_env  # noqa: I100  (imports nova.tests first)

from nova_snapdriver import progress  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def run_until(nova_conf, inst, image_id, stop_at, timeout=120,
              options=None):
    """Start a snapshot in a child; return it once it reached ``stop_at``.

    Within ``timeout`` seconds: a child whose snapshot failed may hang on
    its way out (nova's threads), its stdout never closed.
    """
    env = dict(os.environ, SNAPDRIVER_CHILD_OPTIONS=json.dumps(options or {}))
    child = subprocess.Popen(
        [sys.executable, '-m', 'tests.testbed.child', nova_conf,
         inst.ref_json() if inst else '{}', image_id, stop_at],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, bufsize=0)  # unbuffered: no line waits where select misses
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 1)
        if not ready:
            continue
        line = child.stdout.readline().decode()
        if line.strip() == 'REACHED %s' % stop_at:
            return child
        if not line or line.strip() == 'FINISHED':
            break
    kill9(child)
    raise AssertionError('the snapshot never reached %s' % stop_at)


def kill9(child):
    """SIGKILL the child, as an OOM kill of nova-compute: no cleanup runs."""
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


def serve(nova_conf, options=None, timeout=120):
    """A child that runs as nova-compute does, until killed.

    It starts the driver (``init_host``), whose periodic recovery then
    runs every ``[snapdriver] recovery_interval`` s (set it in
    ``options``); returned once the driver has started.
    """
    return run_until(nova_conf, None, '-', 'serving', timeout, options)


def _configure(conf_path):
    nova_env.configure_from(conf_path)
    options = json.loads(os.environ.get('SNAPDRIVER_CHILD_OPTIONS') or '{}')
    for group, values in options.items():
        for name, value in values.items():
            nova_env.CONF.set_override(name, value, group)


def main(conf_path, instance_json, image_id, stop_at):
    _configure(conf_path)
    if stop_at == 'serving':
        nova_env.load_driver()
        print('REACHED serving', flush=True)
        time.sleep(3600)
    driver = nova_env.load_driver()
    inst = test_instance.InstanceRef(**json.loads(instance_json))
    obj = test_instance.make_instance_object(inst)

    def stop_here(uuid, phase, done, total):
        if phase == 'step:' + stop_at or (
                stop_at == 'upload-data' and phase == 'upload' and done):
            print('REACHED %s' % stop_at, flush=True)
            time.sleep(3600)

    progress.listen(stop_here)
    driver.snapshot(nova_env.admin_context(), obj, image_id,
                    lambda **kw: None)
    print('FINISHED', flush=True)


if __name__ == '__main__':
    main(*sys.argv[1:5])
