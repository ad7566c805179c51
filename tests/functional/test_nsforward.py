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

"""tools/minicloud/minicloud_nsforward.py: loopback in a namespace to loopback
here.

The networked minicloud runs tempest inside a namespace (to reach the
guests) and its APIs on the root namespace's 127.0.0.1.  The forwarder
joins the two.  Here it forwards into a namespace of the test's own, to
a TCP echo server of the test's on the root namespace's loopback, and a
client inside the namespace checks a MiB comes back intact on two
connections at once.  Before the forwarder, nothing there answers.
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.testbed.netns import Namespace

FORWARDER = os.path.join(os.path.dirname(__file__), '..', '..', 'tools',
                         'minicloud',
                         'minicloud_nsforward.py')

# Run inside the namespace: two connections at once, each sends a MiB and
# reads it back; prints the digests.
CLIENT = textwrap.dedent('''
    import hashlib, os, socket, sys, threading
    port = int(sys.argv[1])
    out = []
    def one(seed):
        data = (seed * 1024 * 1024)[:1024 * 1024]
        with socket.create_connection(('127.0.0.1', port), timeout=20) as s:
            threading.Thread(target=s.sendall, args=(data,)).start()
            got = b''
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        out.append(hashlib.sha256(got).hexdigest())
    ts = [threading.Thread(target=one, args=(b,)) for b in (b'a', b'b')]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(' '.join(sorted(out)))
    sys.exit(0 if len(out) == 2 else 1)
''')


def _echo_server():
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(8)

    def echo(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.fixture
def netns():
    ns = Namespace()
    try:
        ns.run('ip', 'link', 'set', 'lo', 'up')
        yield ns
    finally:
        ns.close()


def test_forwarder_relays_loopback_into_a_namespace(netns):
    server = _echo_server()
    port = server.getsockname()[1]
    try:
        before = subprocess.run(
            ['ip', 'netns', 'exec', netns.name, sys.executable, '-c', CLIENT,
             str(port)], capture_output=True, text=True, timeout=60)
        assert before.returncode != 0
        assert 'Connection refused' in before.stderr

        proc = subprocess.Popen(
            [sys.executable, FORWARDER, netns.name, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        try:
            assert 'forwarding' in proc.stdout.readline()
            res = subprocess.run(
                ['ip', 'netns', 'exec', netns.name, sys.executable, '-c',
                 CLIENT, str(port)], capture_output=True, text=True,
                timeout=60)
            assert res.returncode == 0, res.stderr
            want = sorted(hashlib.sha256((b * 1024 * 1024)).hexdigest()
                          for b in (b'a', b'b'))
            assert res.stdout.split() == want
            # The forwarder's socket is in the namespace, not here.
            assert ':%d ' % port in netns.run('ss', '-Hltn').stdout
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc.stdout.close()
    finally:
        server.close()
