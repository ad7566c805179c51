"""The marker guest that snapshot tests rely on really writes markers.

Snapshot tests judge a copy by the markers in it, so this checks the
instrument itself: the guest boots under libvirt, writes markers in
order, and a copy of its disk holds a growing prefix 1..K that agrees
with what the guest reported on its serial console.  libvirtd and the
boot files come from conftest's libvirt_conn and boot_files fixtures;
nothing here skips.
"""

import subprocess
import uuid

import libvirt
import pytest

from tests.testbed import guest
from tests.testbed import libvirtd


def _remove_domain(dom_uuid):
    """Destroy and undefine the domain, on a fresh connection.

    A fresh connection still works if libvirtd restarted mid-test.
    """
    conn = libvirt.open(libvirtd.URI)
    try:
        dom = conn.lookupByUUIDString(dom_uuid)
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    finally:
        conn.close()


def test_guest_writes_consistent_markers(libvirt_conn, boot_files,
                                         tmp_path):
    kernel, initrd = boot_files
    base = tmp_path / 'base.raw'
    disk = tmp_path / 'disk'
    log = str(tmp_path / 'console.log')
    # A qcow2 overlay on a raw base, like a nova instance disk.
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', str(base),
                    '64M'], check=True)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', str(base), str(disk)], check=True)
    dom_uuid = str(uuid.uuid4())
    xml = guest.domain_xml(dom_uuid, 'instance-%s' % dom_uuid[:8],
                           str(disk), 'qcow2', kernel, initrd, log,
                           mode='markers')
    libvirt_conn.createXML(xml, 0)
    try:
        guest.wait_for_console(log, guest.READY, timeout=120)
        guest.wait_for_console(log, '\nMARK 50\n', timeout=120)
        done = guest.last_console_mark(log)
        first = guest.check_consistent(guest.read_markers(str(disk),
                                                          'qcow2'))
        # Every marker the guest reported is on disk; at most the one
        # being written when the copy ended can be ahead of the log.
        assert done <= first <= guest.last_console_mark(log) + 1
        guest.wait_for_console(log, '\nMARK %d\n' % (first + 20),
                               timeout=120)
        second = guest.check_consistent(guest.read_markers(str(disk),
                                                           'qcow2'))
        assert second >= first + 20
    finally:
        _remove_domain(dom_uuid)


def test_read_markers_reports_gaps(tmp_path):
    """A torn copy must fail check_consistent, or the tests prove nothing."""
    image = tmp_path / 'torn.raw'
    with open(image, 'wb') as f:
        f.truncate(guest.MARKER_BASE + 16 * guest.MARKER_SIZE)
        for k in (1, 2, 3, 5, 6, 9):
            f.seek(guest.MARKER_BASE + k * guest.MARKER_SIZE)
            f.write(b'SNAPMARK%010d' % k)
    markers = guest.read_markers(str(image), 'raw')
    assert markers == [1, 2, 3, 5, 6, 9]
    assert guest.check_consistent(markers[:3]) == 3
    assert guest.check_consistent([]) == 0
    with pytest.raises(AssertionError, match='missing 4, 7-8'):
        guest.check_consistent(markers)
