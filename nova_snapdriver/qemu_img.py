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

"""Thin wrappers over the qemu-img commands a snapshot runs.

Every command runs as the nova-compute user, never as root, as nova's
in-tree snapshot runs them: the files a snapshot reads are readable by
nova, and the files it writes live in a directory nova owns (also on an
NFS ``instances_path`` whose root is squashed).  So this driver needs no
rootwrap filters and no privsep at all.

Each command exists twice: a ``*_cmd()`` function that builds the argument
list, and a function that runs it.  Commands that read an image take a
``chain.Node`` and name the whole chain as a ``json:`` filename
(``chain.py``): no header field can make qemu-img open another file.
``info`` and ``measure`` run under nova's resource limits for qemu-img
(``nova.privsep.qemu.QEMU_IMG_LIMITS``, what nova's own
``qemu-img info`` runs under).  Read-only inspection of a disk
in use takes ``-U`` (force share).

Every file a command writes is created first, empty and 0600, by
``_private_file`` (qemu-img keeps the mode of a file that exists): a
snapshot's data is never readable by others, whatever nova-compute's
umask.  Nothing may be at the path yet, and a link there is not followed.
"""

import os
import time

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_serialization import jsonutils

from nova_snapdriver import exception
from nova_snapdriver import novacompat

LOG = logging.getLogger(__name__)

QEMU_IMG = 'qemu-img'


def create_overlay_cmd(path, backing, size):
    # -u: the backing file is named, not opened.
    return [QEMU_IMG, 'create', '-f', 'qcow2', '-F', backing.format,
            '-b', backing.path, '-u', path, str(size)]


def create_cmd(path, fmt, size):
    return [QEMU_IMG, 'create', '-f', fmt, path, str(size)]


def info_cmd(node):
    return [QEMU_IMG, 'info', '-U', '--output=json', node.top().filename()]


def measure_cmd(node, out_format):
    return [QEMU_IMG, 'measure', '-U', '-O', out_format, '--output=json',
            node.filename()]


def convert_cmd(node, dst, dst_format, compress=False, coroutines=16,
                compression_type='zlib'):
    cmd = [QEMU_IMG, 'convert', '-O', dst_format]
    if compress:
        cmd.append('-c')
        # zlib is qcow2's default: only zstd needs saying.
        if compression_type == 'zstd':
            cmd += ['-o', 'compression_type=zstd']
    cmd += ['-W', '-m', str(coroutines), node.filename(), dst]
    return cmd


def _execute(cmd, limits=None):
    """Run one qemu-img command as this process's user."""
    start = time.monotonic()
    try:
        out, _err = processutils.execute(
            *cmd, prlimit=limits,
            # The whole environment of the command: keep PATH.
            env_variables={'LC_ALL': 'C', 'LANG': 'C',
                           'PATH': os.environ.get('PATH', os.defpath)})
    except processutils.ProcessExecutionError as e:
        raise exception.QemuImgFailed(
            command=' '.join(cmd), exit_code=e.exit_code,
            stderr=(e.stderr or '').strip())
    except OSError as e:
        raise exception.QemuImgFailed(
            command=' '.join(cmd), exit_code='-', stderr=str(e))
    LOG.debug('%(cmd)s took %(secs).2fs',
              {'cmd': ' '.join(cmd), 'secs': time.monotonic() - start})
    return out


def _private_file(path):
    """Create ``path`` empty and 0600; raise if anything is there."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW, 0o600))


def create_overlay(path, backing, size):
    """Create an empty qcow2 of ``size`` bytes backed by ``backing``."""
    _private_file(path)
    _execute(create_overlay_cmd(path, backing, size))


def create(path, fmt, size):
    """Create an empty, unbacked image of ``size`` bytes."""
    _private_file(path)
    _execute(create_cmd(path, fmt, size))


def info(node):
    """Return ``qemu-img info`` of the chain's top as a dict.

    Its sizes are the top image's own; nothing below it is opened.
    """
    return jsonutils.loads(_execute(info_cmd(node),
                                    novacompat.qemu_img_limits()))


def measure(node, out_format):
    """Bytes needed to write the whole chain as ``out_format``.

    Returns the ``required`` figure of ``qemu-img measure``.
    """
    out = jsonutils.loads(_execute(measure_cmd(node, out_format),
                                   novacompat.qemu_img_limits()))
    return int(out['required'])


def convert(node, dst, dst_format, compress=False, coroutines=16,
            compression_type='zlib'):
    """Write the whole chain of ``node`` into a flat ``dst``."""
    _private_file(dst)
    _execute(convert_cmd(node, dst, dst_format, compress=compress,
                         coroutines=coroutines,
                         compression_type=compression_type))
