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

``run_until``, ``resume``, ``finish``, ``run`` and ``kill9`` are the
parent's side.  Options the parent overrides for the test reach the child
as JSON in SNAPDRIVER_CHILD_OPTIONS ({group: {option: value}}).

The child starts as nova-compute does: its first import is
``nova.cmd.compute``, which applies the concurrency of the nova release
installed (eventlet's monkey-patching on 31 to 33, native threads on 34,
either as ``OS_NOVA_DISABLE_EVENTLET_PATCHING`` says).  It configures nova
from NOVA_CONF exactly as the tests' own process did, loads the driver by
name (init_host included) and snapshots the instance described by
INSTANCE_JSON.  When the snapshot reaches STOP_AT, a journal step
('overlay', 'undefined', 'copying', 'streaming', 'extracting',
'uploading') or 'upload-data' (the first bytes sent to Glance), it prints
"REACHED <STOP_AT>" and waits, so the parent can kill -9 it right there;
with STOP_AT 'pause:<step>' it waits for a line on stdin instead, then
goes on (``resume``); with 'end' it does not stop.  Its last line is
``FINISHED {json}``: ``ok``, ``error``, ``methods`` (the capture method of
each journal record begun, None for a cold snapshot) and ``eventlet``
(whether eventlet patched its threads).

``serve`` starts a child that only starts the driver ``compute_driver``
names, as nova-compute does (``init_host``, then periodic recovery), and
runs until killed.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback

if __name__ == '__main__':
    # As nova-compute starts: its release's concurrency, before the rest.
    import nova.cmd.compute  # noqa: F401,I100

from tests.testbed import nova_env  # noqa: E402,I100  (nova.tests first)

from nova_snapdriver import journal  # noqa: E402
from nova_snapdriver import novacompat  # noqa: E402
from nova_snapdriver import progress  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402


REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def run_until(nova_conf, inst, image_id, stop_at, timeout=120,
              options=None, environ=None):
    """Start a snapshot in a child; return it once it reached ``stop_at``.

    Within ``timeout`` seconds: a child whose snapshot failed may hang on
    its way out (nova's threads), its stdout never closed.  ``environ``:
    variables the child gets on top of ours.
    """
    env = dict(os.environ, SNAPDRIVER_CHILD_OPTIONS=json.dumps(options or {}),
               **(environ or {}))
    child = subprocess.Popen(
        [sys.executable, '-m', 'tests.testbed.child', nova_conf,
         inst.ref_json() if inst else '{}', image_id, stop_at],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env,
        bufsize=0)  # unbuffered: no line waits where select misses
    if stop_at == 'end':
        return child
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 1)
        if not ready:
            continue
        line = child.stdout.readline().decode()
        if line.strip() == 'REACHED %s' % stop_at:
            return child
        if not line or line.startswith('FINISHED'):
            break
    kill9(child)
    raise AssertionError('the snapshot never reached %s' % stop_at)


def resume(child):
    """Let a child paused at 'pause:<step>' go on."""
    child.stdin.write(b'go\n')
    child.stdin.flush()


def finish(child, timeout=300):
    """Wait for the child's snapshot to end; its FINISHED result (dict)."""
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(child)
        raise AssertionError('the snapshot did not end within %d s'
                             % timeout)
    for line in reversed(out.decode().splitlines()):
        if line.startswith('FINISHED '):
            return json.loads(line[len('FINISHED '):])
    raise AssertionError('the child (exit %s) printed no result:\n%s'
                         % (child.returncode, out.decode()[-4000:]))


def run(nova_conf, inst, image_id, options=None, environ=None,
        timeout=300):
    """One whole snapshot in a child, as nova-compute; its result (dict)."""
    return finish(run_until(nova_conf, inst, image_id, 'end',
                            options=options, environ=environ), timeout)


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
            nova_env.CONF.set_override(
                name, value, None if group == 'DEFAULT' else group)


def note_methods(methods):
    """Append to ``methods`` the capture method of each record begun.

    None for a cold snapshot: a test tells the method that ran from one
    that a fallback picked.
    """
    begin = journal.begin

    def begin_and_note(**fields):
        methods.append(fields.get('capture_method'))
        return begin(**fields)
    journal.begin = begin_and_note


def snapshot_once(driver_name, instance_json, image_id, result):
    """Load the driver, snapshot the instance; ``result`` says how it went.

    ``ok``, and if not, ``error`` and ``traceback``.
    """
    try:
        driver = nova_env.load_driver(driver_name)
        inst = test_instance.InstanceRef(**json.loads(instance_json))
        obj = test_instance.make_instance_object(inst)
        driver.snapshot(nova_env.admin_context(), obj, image_id,
                        lambda **kw: None)
        result['ok'] = True
    except Exception as e:
        result['error'] = '%s: %s' % (type(e).__name__, e)
        result['traceback'] = traceback.format_exc()


def main(conf_path, instance_json, image_id, stop_at):
    _configure(conf_path)
    if stop_at == 'serving':
        nova_env.load_driver(nova_env.CONF.compute_driver)
        print('REACHED serving', flush=True)
        time.sleep(3600)
    result = {'ok': False, 'error': None, 'methods': [],
              'eventlet': novacompat.eventlet_threads()}
    note_methods(result['methods'])
    pause = stop_at.startswith('pause:')
    step = stop_at[len('pause:'):] if pause else stop_at
    reached = []

    def stop_here(uuid, phase, done, total):
        if reached:
            return
        if phase == 'step:' + step or (
                step == 'upload-data' and phase == 'upload' and done):
            reached.append(phase)
            print('REACHED %s' % stop_at, flush=True)
            if pause:
                sys.stdin.readline()
            else:
                time.sleep(3600)

    progress.listen(stop_here)
    snapshot_once(nova_env.CONF.compute_driver, instance_json, image_id,
                  result)
    print('FINISHED ' + json.dumps(result), flush=True)
    sys.stderr.flush()
    # nova's and libvirt's threads must not keep the process alive.
    os._exit(0)


if __name__ == '__main__':
    main(*sys.argv[1:5])
