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

"""libvirt's domains, as the minicloud sees them.

Listing libvirtd's domains, refusing to start beside domains that are not
the cloud's (nova-compute would refuse to start), and destroying and
undefining the cloud's own (those whose disks live under the state
directory).
"""

import contextlib
import os
import time

from minicloud_lib.config import MinicloudError
from minicloud_lib.config import path
from tests.testbed import libvirtd


def no_foreign_domains():
    """Fail if libvirtd has domains (none of ours is left by now).

    nova-compute would refuse to start: "My hypervisor has existing
    instances, but I appear to be a new service in this database".  On a
    shared development machine other tests may be running guests;
    MINICLOUD_WAIT_FOREIGN=<seconds> waits for a moment without any.
    """
    deadline = time.monotonic() + int(os.environ.get(
        'MINICLOUD_WAIT_FOREIGN', '0'))
    while True:
        try:
            foreign = [name for name, _xml in domains()]
        except _libvirt().libvirtError:
            # Another test may be restarting the shared libvirtd.
            if time.monotonic() > deadline:
                raise
            foreign = ['?']
        if not foreign or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if foreign:
        raise MinicloudError(
            'libvirtd already has domains that are not this cloud\'s: %s. '
            'A new nova-compute refuses to start beside them; remove them '
            '(virsh destroy/undefine) or wait for whatever made them to end'
            % ', '.join(sorted(foreign)))


def _libvirt():
    """The libvirt module, its errors raised but not printed on stderr."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def domains():
    """(name, XML) of every domain libvirtd knows."""
    libvirt = _libvirt()
    conn = libvirt.open(libvirtd.URI)
    found = []
    with contextlib.closing(conn):
        for dom in conn.listAllDomains():
            # One may go away between the listing and the look (libvirtd
            # is shared with other tests).
            with contextlib.suppress(libvirt.libvirtError):
                found.append((dom.name(), dom.XMLDesc(0)))
    return found


def remove_domains():
    """Destroy and undefine the domains whose disks live under STATE."""
    libvirt = _libvirt()
    try:
        conn = libvirt.open(libvirtd.URI)
    except libvirt.libvirtError:
        return 0
    removed = 0
    instances = path('nova', 'instances') + os.sep
    with contextlib.closing(conn):
        for dom in conn.listAllDomains():
            try:
                if instances not in dom.XMLDesc(0):
                    continue
            except libvirt.libvirtError:  # gone meanwhile
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            removed += 1
    return removed
