"""Thin wrappers over the qemu-img commands a snapshot runs.

Each command exists twice: a ``*_cmd()`` function that builds the argument
list, and a function that runs it privileged through rootwrap.  The builders
are what ``etc/nova/rootwrap.d/snapdriver.filters`` is tested against, so the
filters allow exactly the command lines this module runs, nothing more.

Formats are always given (``-f``): qemu-img never probes a guest-controlled
image.  Read-only inspection of a disk in use takes ``-U`` (force share).
"""

import time

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_serialization import jsonutils

from nova import utils as nova_utils

from nova_snapdriver import exception

LOG = logging.getLogger(__name__)

QEMU_IMG = 'qemu-img'


def create_overlay_cmd(path, backing_file, backing_format, size):
    return [QEMU_IMG, 'create', '-f', 'qcow2', '-F', backing_format,
            '-b', backing_file, path, str(size)]


def create_cmd(path, size):
    return [QEMU_IMG, 'create', '-f', 'qcow2', path, str(size)]


def info_cmd(path, fmt):
    return [QEMU_IMG, 'info', '-U', '-f', fmt, '--output=json', path]


def measure_cmd(path, fmt, out_format):
    return [QEMU_IMG, 'measure', '-U', '-f', fmt, '-O', out_format,
            '--output=json', path]


def convert_cmd(src, src_format, dst, dst_format, compress=False,
                coroutines=16, compression_type='zlib'):
    cmd = [QEMU_IMG, 'convert', '-f', src_format, '-O', dst_format]
    if compress:
        cmd.append('-c')
        # zlib is qcow2's default: only zstd needs saying (and is the only
        # -o the rootwrap filters allow).
        if compression_type == 'zstd':
            cmd += ['-o', 'compression_type=zstd']
    cmd += ['-W', '-m', str(coroutines), src, dst]
    return cmd


def _execute(cmd):
    """Run one qemu-img command as root through nova's rootwrap."""
    start = time.monotonic()
    try:
        out, _err = processutils.execute(
            *cmd, run_as_root=True,
            root_helper=nova_utils.get_root_helper(),
            env_variables={'LC_ALL': 'C', 'LANG': 'C'})
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


def create_overlay(path, backing_file, backing_format, size):
    """Create an empty qcow2 of ``size`` bytes backed by ``backing_file``."""
    _execute(create_overlay_cmd(path, backing_file, backing_format, size))


def create(path, size):
    """Create an empty, unbacked qcow2 of ``size`` bytes."""
    _execute(create_cmd(path, size))


def info(path, fmt):
    """Return ``qemu-img info`` as a dict; safe on a disk in use."""
    return jsonutils.loads(_execute(info_cmd(path, fmt)))


def measure(path, fmt, out_format):
    """Bytes needed to write the whole chain of ``path`` as ``out_format``.

    Returns the ``required`` figure of ``qemu-img measure``.
    """
    out = jsonutils.loads(_execute(measure_cmd(path, fmt, out_format)))
    return int(out['required'])


def convert(src, src_format, dst, dst_format, compress=False, coroutines=16,
            compression_type='zlib'):
    """Write the whole chain of ``src`` into a flat ``dst``."""
    _execute(convert_cmd(src, src_format, dst, dst_format,
                         compress=compress, coroutines=coroutines,
                         compression_type=compression_type))
