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

"""What a snapshot reads: the disk's chain, checked, then named in full.

``qemu-img`` follows whatever a qcow2 header names: a backing file (a path,
a ``json:`` or protocol name) and an external data file.  QEMU holds the
instance's disk open read-write, so a guest that escapes into its QEMU
process can rewrite that header to name any file on the host; the next
snapshot would then copy that file into the tenant's image.  So before any
``qemu-img`` touches a file, this module reads the header itself, in
Python, and accepts exactly the chain nova builds:

* a raw disk (no header at all), or
* a qcow2 disk with no external data file, not encrypted, and either no
  backing file or one plain path to a regular file directly inside nova's
  image cache (``$instances_path/<[image_cache] subdirectory_name>``),
  resolved (no ``..`` or symlink leads out of it), no ``:`` (no protocol
  or ``json:`` name);
* that backing file raw, or qcow2 with no backing file and no data file of
  its own.

A header whose backing file names no format (disks made before nova passed
``backing_fmt``) gets it from the backing file itself: qcow2 if that starts
with the qcow2 magic, raw otherwise, as nova's own probe decides.

The accepted chain is then written on every ``qemu-img`` command line as a
``json:`` filename with every node and driver given and ``"backing": null``
at the end, so no header field can make ``qemu-img`` open another file,
even if it changed after the check.  Anything else raises
``UnsafeDiskChain`` and nothing is read.
"""

import dataclasses
import os
import struct

from oslo_config import cfg
from oslo_serialization import jsonutils

from nova_snapdriver import exception

CONF = cfg.CONF

QCOW2_MAGIC = b'QFI\xfb'
FORMATS = ('raw', 'qcow2')
# Header extensions (qcow2 specification, "Header extensions").
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xe2792aca
EXT_DATA_FILE = 0x44415441
# Incompatible feature bit 2: the guest data lives in an external file.
INCOMPAT_DATA_FILE = 1 << 2
# The whole header, extensions and backing file name included, must lie
# within the first cluster; 2 MiB is the largest cluster qcow2 allows.
HEADER_READ = 2 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Header(object):
    """The fields of a qcow2 header that name other files."""
    version: int
    backing_file: str | None
    backing_format: str | None
    data_file: bool
    encrypted: bool


@dataclasses.dataclass(frozen=True)
class Node(object):
    """One image of a chain: its path, its format and what backs it."""
    path: str
    format: str
    backing: 'Node | None' = None

    def spec(self):
        """The blockdev options of this node and everything under it."""
        spec = {'driver': self.format,
                'file': {'driver': 'file', 'filename': self.path}}
        if self.format == 'qcow2':
            spec['backing'] = self.backing.spec() if self.backing else None
        return spec

    def filename(self):
        """The chain as one ``json:`` filename for qemu-img."""
        return 'json:' + jsonutils.dumps(self.spec(), sort_keys=True)

    def top(self):
        """This image alone, its backing file disabled.

        ``qemu-img info`` never opens a backing file, and refuses options
        for one: it gets the top alone.
        """
        return Node(self.path, self.format)


def _unsafe(path, reason):
    return exception.UnsafeDiskChain(path=path, reason=reason)


def read_header(path):
    """Parse the qcow2 header of ``path``; raise UnsafeDiskChain if odd."""
    try:
        with open(path, 'rb') as f:
            data = f.read(HEADER_READ)
    except OSError as e:
        raise _unsafe(path, 'cannot read its header: %s' % e)
    if data[:4] != QCOW2_MAGIC or len(data) < 72:
        raise _unsafe(path, 'not a qcow2 image')
    (version, backing_offset, backing_size, _cluster_bits, _size,
     crypt) = struct.unpack_from('>IQIIQI', data, 4)
    if version not in (2, 3):
        raise _unsafe(path, 'qcow2 version %d' % version)
    incompatible, header_length = 0, 72
    if version == 3:
        if len(data) < 104:
            raise _unsafe(path, 'truncated qcow2 v3 header')
        incompatible = struct.unpack_from('>Q', data, 72)[0]
        header_length = struct.unpack_from('>I', data, 100)[0]
    backing = None
    if backing_offset:
        end = backing_offset + backing_size
        if backing_size == 0 or backing_size > 1023 or end > len(data):
            raise _unsafe(path, 'a malformed backing file name')
        try:
            backing = data[backing_offset:end].decode('utf-8')
        except UnicodeDecodeError:
            raise _unsafe(path, 'a backing file name that is not UTF-8')
    backing_format, data_file = None, bool(incompatible & INCOMPAT_DATA_FILE)
    offset = header_length
    while True:
        if offset + 8 > len(data):
            raise _unsafe(path, 'header extensions past the first cluster')
        ext_type, ext_len = struct.unpack_from('>II', data, offset)
        if ext_type == EXT_END:
            break
        body = data[offset + 8:offset + 8 + ext_len]
        if ext_type == EXT_BACKING_FORMAT:
            backing_format = body.decode('ascii', 'replace')
        elif ext_type == EXT_DATA_FILE:
            data_file = True
        offset += 8 + (ext_len + 7) // 8 * 8
    return Header(version=version, backing_file=backing,
                  backing_format=backing_format, data_file=data_file,
                  encrypted=crypt != 0)


def image_cache_dir():
    """nova's image cache, where every backing file of a root disk lives."""
    return os.path.join(CONF.instances_path,
                        CONF.image_cache.subdirectory_name)


def _sniff_format(path):
    """qcow2 if the file starts with the qcow2 magic, else raw."""
    try:
        with open(path, 'rb') as f:
            return 'qcow2' if f.read(4) == QCOW2_MAGIC else 'raw'
    except OSError as e:
        raise _unsafe(path, 'cannot read it: %s' % e)


def _flat_qcow2(path, header, what):
    """A qcow2 that must stand alone: no backing, no data file."""
    if header.data_file:
        raise _unsafe(path, '%s names an external data file' % what)
    if header.encrypted:
        raise _unsafe(path, '%s is encrypted' % what)
    if header.backing_file is not None:
        raise _unsafe(path, '%s names a backing file (%s)'
                      % (what, header.backing_file))


def _backing_node(disk_path, header):
    name = header.backing_file
    if ':' in name:
        raise _unsafe(disk_path, 'its backing file %r is a protocol or '
                      'json: name, not a file nova made' % name)
    # Both sides resolved: an instances_path reached through a symlink is
    # the operator's choice; a symlink or ".." that leads out of the cache
    # is not.
    path = os.path.realpath(os.path.join(os.path.dirname(disk_path), name))
    cache = os.path.realpath(image_cache_dir())
    if os.path.dirname(path) != cache:
        raise _unsafe(disk_path, 'its backing file %s is not a file in '
                      "nova's image cache %s" % (name, cache))
    if not os.path.isfile(path):
        raise _unsafe(disk_path, 'its backing file %s is missing or not '
                      'a regular file' % path)
    fmt = header.backing_format or _sniff_format(path)
    if fmt not in FORMATS:
        raise _unsafe(disk_path, 'its backing file format is %r' % fmt)
    if fmt == 'qcow2':
        _flat_qcow2(path, read_header(path), 'the backing file')
    return Node(path, fmt)


def disk_chain(disk_path, disk_format):
    """The checked chain of an instance's root disk, as a Node."""
    if disk_format == 'raw':
        return Node(disk_path, 'raw')
    if disk_format != 'qcow2':
        raise _unsafe(disk_path, 'format %r is not handled' % disk_format)
    header = read_header(disk_path)
    if header.data_file:
        raise _unsafe(disk_path, 'its header names an external data file')
    if header.encrypted:
        raise _unsafe(disk_path, 'it is a qcow2-encrypted disk')
    if header.backing_file is None:
        return Node(disk_path, 'qcow2')
    return Node(disk_path, 'qcow2', _backing_node(disk_path, header))


def captured(path, fmt, backing=None):
    """The chain of a file the capture wrote (overlay or backup), checked.

    QEMU had it open read-write, so its header is checked like a disk's:
    an overlay may name only the backing file it was created with, a
    backup nothing at all.  The Node names ``backing`` explicitly.
    """
    if fmt == 'raw':
        return Node(path, 'raw')
    header = read_header(path)
    if header.data_file or header.encrypted:
        raise _unsafe(path, 'its header names an external data file or '
                      'encryption the driver never asked for')
    expected = backing.path if backing else None
    if header.backing_file != expected:
        raise _unsafe(path, 'its header names the backing file %r, not %r '
                      'it was created with' % (header.backing_file, expected))
    return Node(path, 'qcow2', backing)
