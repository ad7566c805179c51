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

"""The minicloud's APIs inside the namespace tempest runs in.

    minicloud_nsforward.py NETNS PORT [PORT ...]

tempest runs inside the network namespace NETNS (tools/minicloud/minicloud_lib/
guestnet.py): its SSH client must reach the guests, and only that
namespace has an address on their network.  Its loopback is its own, so
the APIs on 127.0.0.1 in the root namespace are not there.  This process,
started in the root namespace, makes a listening socket on 127.0.0.1:PORT
inside NETNS for each PORT (a socket stays in the namespace it was made
in), then relays each connection to 127.0.0.1:PORT here.  Loopback on
both sides: nothing leaves the machine or enters a guest network.  The
catalog's URLs work unchanged in the namespace.

Runs until killed (``tools/minicloud/minicloud down`` stops it with its group).
"""

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'setns: %s' % os.strerror(err))


def listen_in(netns, ports):
    """Listening sockets on 127.0.0.1:ports, made inside netns.

    Called before any other thread exists: setns() moves the calling
    thread, which then moves back.
    """
    here = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
    there = os.open(os.path.join('/run/netns', netns), os.O_RDONLY)
    socks = []
    _setns(there)
    try:
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('127.0.0.1', port))
            s.listen(64)
            socks.append(s)
    finally:
        _setns(here)
        os.close(there)
        os.close(here)
    return socks


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # The other direction may still have data to deliver.
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def _relay(conn, port):
    with conn:
        try:
            upstream = socket.create_connection(('127.0.0.1', port),
                                                timeout=30)
        except OSError:
            return
        upstream.settimeout(None)
        with upstream:
            back = threading.Thread(target=_pump, args=(upstream, conn),
                                    daemon=True)
            back.start()
            _pump(conn, upstream)
            back.join()


def _serve(listener, port):
    while True:
        conn, _peer = listener.accept()
        threading.Thread(target=_relay, args=(conn, port),
                         daemon=True).start()


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    netns, ports = argv[1], [int(p) for p in argv[2:]]
    socks = listen_in(netns, ports)
    print('forwarding 127.0.0.1:%s in %s to the same ports here'
          % (','.join(map(str, ports)), netns), flush=True)
    threads = [threading.Thread(target=_serve, args=(s, port), daemon=True)
               for s, port in zip(socks, ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
