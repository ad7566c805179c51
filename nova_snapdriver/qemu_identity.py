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

"""Who QEMU runs as, and the one directory it shares with nova-compute.

A streaming snapshot's NBD export listens on a unix socket that QEMU
itself creates (``nbd-server-start``), so QEMU must be able to write into
the directory the socket lives in.  On every distribution QEMU runs as an
unprivileged user of its own (``libvirt-qemu`` on Debian and Ubuntu,
``qemu`` on RHEL), not as nova-compute's user, while the snapshot's work
dir is nova's (mode 0701).

libvirt names the user and group it runs a domain's QEMU as in the live
domain XML's DAC security label, ``<seclabel model='dac'><label>+UID:+GID
</label>``.  The socket gets a directory of its own, group-owned by QEMU's
group and mode 0730: QEMU's group may create the socket (but not list the
directory), nobody else may enter it, and nothing is world-writable.  QEMU
creates the socket with its umask (libvirt sets 0002), so it is writable
by QEMU's group: nova-compute's user must be in that group to connect,
and to hand the directory to it (``chgrp`` of one's own file to a group
one is in).  ``doc/source/install.rst`` says so.

Nothing here runs a command: only the domain XML and the process's own
credentials are read.
"""

import collections
import os
from xml.etree import ElementTree

Identity = collections.namedtuple('Identity', 'uid gid')

# <work dir>/nbd/sock: short, because a unix socket's path must fit in
# sun_path (108 bytes with its NUL) and the work dir is already
# <snapshots_directory>/<8 of the image uuid>.<12 hex> (plan.work_dir_name).
SOCKET_DIR = 'nbd'
SOCKET_NAME = 'sock'
SOCKET_PATH_MAX = 107

SHARED_MODE = 0o730   # owner: all; QEMU's group: create, enter; others: no
PRIVATE_MODE = 0o700  # QEMU runs as nova-compute's own user


def _id(text):
    """'+64055' (libvirt's numeric form) or '64055' -> 64055, else None."""
    text = (text or '').strip().lstrip('+')
    return int(text) if text.isdigit() else None


def from_xml(xml):
    """The Identity in a live domain XML's DAC label, or None."""
    root = ElementTree.fromstring(xml)
    for label in root.findall("./seclabel[@model='dac']/label"):
        user, _, group = (label.text or '').partition(':')
        uid, gid = _id(user), _id(group)
        if uid is not None and gid is not None:
            return Identity(uid, gid)
    return None


def of_guest(guest):
    """The Identity QEMU runs ``guest`` as (nova's Guest), or None."""
    return from_xml(guest.get_xml_desc())


def groups():
    """The groups this process is in: its effective and supplementary."""
    return {os.getegid()} | set(os.getgroups())


def unreachable(ident):
    """Why nova-compute cannot share a socket with QEMU, or None if it can.

    It can when QEMU runs as this very user, when this process is root,
    or when it is in QEMU's group.
    """
    if ident is None:
        return ('the domain has no DAC security label, so the user QEMU '
                'runs as is unknown')
    euid = os.geteuid()
    if ident.uid == euid or euid == 0 or ident.gid in groups():
        return None
    return ('QEMU runs as uid %d, gid %d, and nova-compute\'s user (uid %d) '
            'is not in group %d: add it to QEMU\'s group (qemu.conf '
            '"group") and restart nova-compute' % (ident.uid, ident.gid,
                                                   euid, ident.gid))


def make_shared_dir(path, ident):
    """Create ``path`` for QEMU to create its socket in; return its mode.

    Private (0700) when QEMU runs as this user; else group-owned by
    QEMU's group, mode 0730.  ``ident`` must be reachable (see
    ``unreachable``).
    """
    os.mkdir(path, PRIVATE_MODE)
    if ident is None or ident.uid == os.geteuid():
        return PRIVATE_MODE
    os.chown(path, -1, ident.gid)
    # chmod after chown: a chown by a non-root user may clear mode bits.
    os.chmod(path, SHARED_MODE)
    return SHARED_MODE


def socket_path(work_dir):
    return os.path.join(work_dir, SOCKET_DIR, SOCKET_NAME)


def socket_path_too_long(work_dir):
    """Why QEMU cannot bind the socket of ``work_dir``, or None if it can."""
    path = socket_path(work_dir)
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return None
    return ('the NBD socket path %s is %d bytes, more than a unix socket '
            'takes (%d): give [libvirt] snapshots_directory a shorter path'
            % (path, len(os.fsencode(path)), SOCKET_PATH_MAX))
