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

"""A network namespace of a test's own, and everything started in it.

``Namespace()`` adds ``snaptest-<hex>``; ``start`` runs a process inside
it in its own process group; ``close`` stops those, kills anything else
still in the namespace, and deletes it.  Nothing is added to the host's
own namespace.
"""

import contextlib
import os
import signal
import subprocess
import time
import uuid


def run(*argv, **kwargs):
    kwargs.setdefault('timeout', 120)
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          **kwargs)


class Namespace(object):
    """A network namespace of the test's own; ``close`` kills all in it."""

    def __init__(self):
        self.name = 'snaptest-' + uuid.uuid4().hex[:8]
        run('ip', 'netns', 'add', self.name)
        self.procs = []

    def run(self, *argv):
        return run('ip', 'netns', 'exec', self.name, *argv)

    def start(self, argv, log):
        with open(log, 'wb') as f:
            proc = subprocess.Popen(
                ['ip', 'netns', 'exec', self.name] + list(argv),
                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def pids(self):
        out = run('ip', 'netns', 'pids', self.name).stdout
        return [int(p) for p in out.split()]

    def close(self):
        try:
            for proc in self.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in self.procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            for pid in self.pids():  # anything that left its group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            run('ip', 'netns', 'del', self.name)
