"""etc/nova/rootwrap.d/snapdriver.filters, through oslo.rootwrap itself.

The filters are loaded and matched with oslo.rootwrap's own code (the same
``load_filters`` and ``match_filter`` nova-rootwrap runs), against the
command lines that nova_snapdriver.qemu_img's ``*_cmd()`` builders produce
with nova's default paths.  Everything the driver runs must be allowed, and
anything else: other places, sub-commands, options or formats, must be
refused.

The test is hermetic: ``exec_dirs`` names a temporary directory holding a
dummy ``qemu-img``, so no real qemu-img is needed (rootwrap only checks
that the executable exists; nothing is run).
"""

import os
import pathlib
import shutil
import stat

from oslo_rootwrap import filters as rw_filters
from oslo_rootwrap import wrapper
import pytest

from nova_snapdriver import qemu_img

FILTERS_FILE = (pathlib.Path(__file__).resolve().parents[2] /
                'etc' / 'nova' / 'rootwrap.d' / 'snapdriver.filters')

INSTANCES = '/var/lib/nova/instances'
INSTANCE_UUID = '6f1b1a3c-2b5e-4c8e-9a0d-3e2f1c4b5a69'
IMAGE_UUID = 'c0ffee00-1234-4abc-8def-0123456789ab'
SHA1 = 'da39a3ee5e6b4b0d3255bfef95601890afd80709'

DISK = '%s/%s/disk' % (INSTANCES, INSTANCE_UUID)
BASE = '%s/_base/%s' % (INSTANCES, SHA1)
BASES = [BASE, BASE + '_5', BASE + '_sm']
OVERLAY = '%s/snapshots/%s/overlay.qcow2' % (INSTANCES, IMAGE_UUID)
IMAGE = '%s/snapshots/%s/image' % (INSTANCES, IMAGE_UUID)
BACKUP = '%s/snapshots/%s/backup.qcow2' % (INSTANCES, IMAGE_UUID)

FORMATS = ['raw', 'qcow2']
SIZES = [1, 1073741824, 10737418240, 2199023255552]
COROUTINES = [1, 2, 8, 9, 10, 16]

FILTER_NAMES = {
    'snapdriver-qemu-img-create-overlay',
    'snapdriver-qemu-img-create',
    'snapdriver-qemu-img-info',
    'snapdriver-qemu-img-measure',
    'snapdriver-qemu-img-convert',
    'snapdriver-qemu-img-convert-compressed',
    'snapdriver-qemu-img-convert-compressed-zstd',
}


@pytest.fixture(scope='module')
def rootwrap(tmp_path_factory):
    """(filters, exec_dirs): our file alone, and a dummy qemu-img."""
    filters_dir = tmp_path_factory.mktemp('rootwrap.d')
    shutil.copy(FILTERS_FILE, filters_dir)
    bin_dir = tmp_path_factory.mktemp('bin')
    exe = bin_dir / 'qemu-img'
    exe.write_text('#!/bin/sh\nexit 1\n')
    exe.chmod(stat.S_IRWXU)
    return wrapper.load_filters([str(filters_dir)]), [str(bin_dir)]


def _match(rootwrap, cmd):
    filters, exec_dirs = rootwrap
    return wrapper.match_filter(filters, list(cmd), exec_dirs=exec_dirs)


def _refused(rootwrap, cmd):
    with pytest.raises(wrapper.NoFilterMatched):
        _match(rootwrap, cmd)


# --- the file itself ------------------------------------------------------

def test_file_defines_one_regexp_filter_per_command_shape(rootwrap):
    filters, _exec_dirs = rootwrap
    ours = [f for f in filters if f.name != 'privsep-helper']
    assert {f.name for f in ours} == FILTER_NAMES
    # A duplicated name would silently replace a filter: count them too.
    assert len(ours) == len(FILTER_NAMES)
    for f in ours:
        assert type(f) is rw_filters.RegExpFilter
        assert f.exec_path == 'qemu-img'
        assert f.run_as == 'root'
        assert f.args[0] == 'qemu-img'


def test_every_path_regex_is_confined_to_instances_path(rootwrap):
    filters, _exec_dirs = rootwrap
    for f in filters:
        if f.name == 'privsep-helper':
            continue
        for pattern in f.args:
            if pattern.startswith('/'):
                assert pattern.startswith(INSTANCES + '/'), pattern


def test_allowed_command_runs_the_exec_dirs_qemu_img_as_root(rootwrap):
    _filters, exec_dirs = rootwrap
    cmd = qemu_img.info_cmd(DISK, 'qcow2')
    f = _match(rootwrap, cmd)
    assert f.run_as == 'root'
    assert f.get_command(cmd, exec_dirs=exec_dirs) == (
        [os.path.join(exec_dirs[0], 'qemu-img')] + cmd[1:])


# --- (a) everything the builders produce is allowed -----------------------

def _allowed_cases():
    for fmt in FORMATS:
        for base in BASES:
            for size in SIZES:
                yield ('snapdriver-qemu-img-create-overlay',
                       qemu_img.create_overlay_cmd(OVERLAY, base, fmt, size))
    for size in SIZES:
        yield ('snapdriver-qemu-img-create',
               qemu_img.create_cmd(OVERLAY, size))
    for path in [DISK, OVERLAY, IMAGE] + BASES:
        for fmt in FORMATS:
            yield 'snapdriver-qemu-img-info', qemu_img.info_cmd(path, fmt)
    for fmt in FORMATS:
        for out_fmt in FORMATS:
            yield ('snapdriver-qemu-img-measure',
                   qemu_img.measure_cmd(DISK, fmt, out_fmt))
    for src in (DISK, OVERLAY, BACKUP):
        for fmt in FORMATS:
            for out_fmt in FORMATS:
                for n in COROUTINES:
                    yield ('snapdriver-qemu-img-convert',
                           qemu_img.convert_cmd(src, fmt, IMAGE, out_fmt,
                                                coroutines=n))
                    yield ('snapdriver-qemu-img-convert-compressed',
                           qemu_img.convert_cmd(src, fmt, IMAGE, out_fmt,
                                                compress=True, coroutines=n))
            for n in COROUTINES:
                yield ('snapdriver-qemu-img-convert-compressed-zstd',
                       qemu_img.convert_cmd(src, fmt, IMAGE, 'qcow2',
                                            compress=True, coroutines=n,
                                            compression_type='zstd'))
    # The builders' defaults.
    yield ('snapdriver-qemu-img-convert',
           qemu_img.convert_cmd(DISK, 'qcow2', IMAGE, 'qcow2'))


ALLOWED = list(_allowed_cases())


@pytest.mark.parametrize('name,cmd', ALLOWED,
                         ids=[' '.join(c[1:]) for _n, c in ALLOWED])
def test_builder_command_is_allowed_by_its_filter(rootwrap, name, cmd):
    assert _match(rootwrap, cmd).name == name


# --- (b) anything else is refused -----------------------------------------

BAD_PATHS = {
    'etc-shadow': '/etc/shadow',
    'tmp': '/tmp/x',
    'dev-sda': '/dev/sda',
    'dotdot-out-of-instances': INSTANCES + '/../../etc/passwd',
    'dotdot-as-instance-dir': INSTANCES + '/../disk',
    'dotdot-after-disk': DISK + '/..',
    'dotdot-between-instance-and-disk':
        '%s/%s/../%s/disk' % (INSTANCES, INSTANCE_UUID, INSTANCE_UUID),
    'dotdot-after-base-dir': INSTANCES + '/_base/../' + SHA1,
    'dotdot-in-base-suffix': BASE + '_/../../x',
    'dotdot-after-snapshots':
        '%s/snapshots/../%s/image' % (INSTANCES, IMAGE_UUID),
    'dotdot-after-image-dir':
        '%s/snapshots/%s/../image' % (INSTANCES, IMAGE_UUID),
    'dot-component': '%s/./%s/disk' % (INSTANCES, INSTANCE_UUID),
    'double-slash': '%s//%s/disk' % (INSTANCES, INSTANCE_UUID),
    'leading-double-slash': '/' + DISK,
    'trailing-slash': DISK + '/',
    'snapshots-extra-subdir':
        '%s/snapshots/%s/x/image' % (INSTANCES, IMAGE_UUID),
    'overlay-name-with-dot-as-wildcard':
        '%s/snapshots/%s/overlayXqcow2' % (INSTANCES, IMAGE_UUID),
    'snapshots-other-name':
        '%s/snapshots/%s/images' % (INSTANCES, IMAGE_UUID),
    'snapshots-without-uuid-dir': INSTANCES + '/snapshots/image',
    'snapshots-other-file':
        '%s/snapshots/%s/image.part' % (INSTANCES, IMAGE_UUID),
    'instances-path-itself': INSTANCES,
    'file-in-instances-path': INSTANCES + '/disk',
    'disk-local': DISK + '.local',
    'disk-eph0': DISK + '.eph0',
    'disk-config': DISK + '.config',
    'console-log': '%s/%s/console.log' % (INSTANCES, INSTANCE_UUID),
    'uppercase-uuid':
        '%s/%s/disk' % (INSTANCES, INSTANCE_UUID.upper()),
    'uuid-without-dashes':
        '%s/%s/disk' % (INSTANCES, INSTANCE_UUID.replace('-', '')),
    'base-short-hex': INSTANCES + '/_base/' + SHA1[:-1],
    'base-long-hex': INSTANCES + '/_base/' + SHA1 + '0',
    'base-dot-suffix': BASE + '.part',
    'base-subdir': BASE + '/x',
    'base-ephemeral-name': INSTANCES + '/_base/ephemeral_20_40d1d2c',
    'other-prefix-with-instances-inside': '/tmp' + DISK,
    'relative-disk': 'disk',
    'relative-instance-disk': '%s/disk' % INSTANCE_UUID,
    'relative-instances-path': DISK.lstrip('/'),
    'newline-then-more': DISK + '\n/../../etc/shadow',
    'json-pseudo-protocol': 'json:{"file.filename": "/etc/shadow"}',
    'nbd-protocol': 'nbd://127.0.0.1:10809/x',
    'empty': '',
}


def _bad_path_cases():
    for label, p in BAD_PATHS.items():
        yield 'create-overlay-target-' + label, qemu_img.create_overlay_cmd(
            p, BASE, 'raw', 1024)
        yield 'create-overlay-backing-' + label, qemu_img.create_overlay_cmd(
            OVERLAY, p, 'raw', 1024)
        yield 'create-target-' + label, qemu_img.create_cmd(p, 1024)
        yield 'info-' + label, qemu_img.info_cmd(p, 'qcow2')
        yield 'measure-' + label, qemu_img.measure_cmd(p, 'qcow2', 'raw')
        yield 'convert-source-' + label, qemu_img.convert_cmd(
            p, 'qcow2', IMAGE, 'qcow2')
        yield 'convert-dest-' + label, qemu_img.convert_cmd(
            OVERLAY, 'qcow2', p, 'qcow2', compress=True)


# Paths that are allowed somewhere, used where they are not.
WRONG_ROLE = {
    'create-overlay-on-disk': qemu_img.create_overlay_cmd(
        DISK, BASE, 'raw', 1024),
    'create-overlay-on-image': qemu_img.create_overlay_cmd(
        IMAGE, BASE, 'raw', 1024),
    'create-overlay-on-base': qemu_img.create_overlay_cmd(
        BASE, BASE + '_5', 'raw', 1024),
    'create-overlay-backed-by-disk': qemu_img.create_overlay_cmd(
        OVERLAY, DISK, 'qcow2', 1024),
    'create-overlay-backed-by-image': qemu_img.create_overlay_cmd(
        OVERLAY, IMAGE, 'qcow2', 1024),
    'create-overlay-backed-by-itself': qemu_img.create_overlay_cmd(
        OVERLAY, OVERLAY, 'qcow2', 1024),
    'create-on-disk': qemu_img.create_cmd(DISK, 1024),
    'create-on-base': qemu_img.create_cmd(BASE, 1024),
    'create-on-image': qemu_img.create_cmd(IMAGE, 1024),
    'measure-base': qemu_img.measure_cmd(BASE, 'raw', 'qcow2'),
    'measure-overlay': qemu_img.measure_cmd(OVERLAY, 'qcow2', 'qcow2'),
    'convert-from-base': qemu_img.convert_cmd(BASE, 'raw', IMAGE, 'qcow2'),
    'convert-from-image': qemu_img.convert_cmd(
        IMAGE, 'raw', IMAGE, 'qcow2'),
    'convert-onto-disk': qemu_img.convert_cmd(
        OVERLAY, 'qcow2', DISK, 'qcow2'),
    'convert-onto-base': qemu_img.convert_cmd(
        OVERLAY, 'qcow2', BASE, 'raw'),
    'convert-onto-overlay': qemu_img.convert_cmd(
        DISK, 'qcow2', OVERLAY, 'qcow2'),
    'convert-onto-backup': qemu_img.convert_cmd(
        DISK, 'qcow2', BACKUP, 'qcow2'),
    'convert-zstd-onto-backup': qemu_img.convert_cmd(
        DISK, 'qcow2', BACKUP, 'qcow2', compress=True,
        compression_type='zstd'),
    'create-on-backup': qemu_img.create_cmd(BACKUP, 1024),
    'measure-backup': qemu_img.measure_cmd(BACKUP, 'qcow2', 'qcow2'),
}

SUBCOMMANDS = ['rebase', 'commit', 'amend', 'dd', 'bench', 'check',
               'resize', 'snapshot', 'map', 'compare', 'bitmap', 'help']

# A valid command of every shape, whose sub-command is then replaced (the
# argument count stays right, so only the sub-command regex can refuse it).
SHAPES = {
    'create-overlay': qemu_img.create_overlay_cmd(OVERLAY, BASE, 'raw', 1),
    'create': qemu_img.create_cmd(OVERLAY, 1),
    'info': qemu_img.info_cmd(DISK, 'raw'),
    'measure': qemu_img.measure_cmd(DISK, 'raw', 'raw'),
    'convert': qemu_img.convert_cmd(DISK, 'raw', IMAGE, 'raw'),
    'convert-compressed': qemu_img.convert_cmd(
        DISK, 'raw', IMAGE, 'raw', compress=True),
    'convert-compressed-zstd': qemu_img.convert_cmd(
        DISK, 'raw', IMAGE, 'qcow2', compress=True,
        compression_type='zstd'),
}


def _subcommand_cases():
    for shape, cmd in SHAPES.items():
        for sub in SUBCOMMANDS:
            yield '%s-args-under-%s' % (shape, sub), [cmd[0], sub] + cmd[2:]
    # And what those sub-commands would really be used for.
    yield 'rebase-onto-etc-shadow', [
        'qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', '/etc/shadow',
        '-F', 'raw', OVERLAY]
    yield 'commit-overlay', ['qemu-img', 'commit', '-f', 'qcow2', OVERLAY]
    yield 'amend-backing-file', [
        'qemu-img', 'amend', '-f', 'qcow2', '-o', 'backing_file=/etc/shadow',
        DISK]
    yield 'dd-from-dev-sda', [
        'qemu-img', 'dd', '-f', 'raw', '-O', 'raw', 'if=/dev/sda',
        'of=' + IMAGE]
    yield 'bench-disk', ['qemu-img', 'bench', '-f', 'qcow2', DISK]
    yield 'check-repair-disk', ['qemu-img', 'check', '-r', 'all', DISK]
    yield 'resize-disk', ['qemu-img', 'resize', '-f', 'qcow2', DISK, '1G']
    yield 'snapshot-delete', ['qemu-img', 'snapshot', '-d', 's', DISK]
    yield 'no-sub-command', ['qemu-img']
    yield 'version', ['qemu-img', '--version']
    # Other executables with a valid argument list.
    for exe in ('qemu-io', 'qemu-nbd', 'qemu-img.real', '/tmp/qemu-img',
                'sh'):
        yield 'executable-' + exe.replace('/', '_'), [exe] + SHAPES['info'][1:]


def _insert(cmd, index, *args):
    return cmd[:index] + list(args) + cmd[index:]


def _replace(cmd, old, new):
    assert old in cmd, (old, cmd)
    return [new if a == old else a for a in cmd]


def _option_cases():
    co = SHAPES['create-overlay']
    cr = SHAPES['create']
    inf = SHAPES['info']
    me = SHAPES['measure']
    cv = SHAPES['convert']
    cvc = SHAPES['convert-compressed']
    # Extra options.
    yield 'create-o-backing-file', _insert(
        cr, 4, '-o', 'backing_file=/etc/shadow')
    yield 'create-overlay-o-backing-file', _insert(
        co, 8, '-o', 'backing_file=/etc/shadow')
    yield 'create-o-preallocation', _insert(cr, 4, '-o', 'preallocation=full')
    yield 'create-with-U', _insert(cr, 2, '-U')
    yield 'create-overlay-with-U', _insert(co, 2, '-U')
    yield 'create-overlay-unsafe-u', _insert(co, 8, '-u')
    yield 'create-quiet', _insert(cr, 2, '-q')
    yield 'create-object-secret', _insert(
        cr, 2, '--object', 'secret,id=s0,file=/etc/shadow')
    yield 'info-image-opts', _insert(inf, 2, '--image-opts')
    yield 'info-backing-chain', _insert(inf, 2, '--backing-chain')
    yield 'info-t-none', _insert(inf, 2, '-t', 'none')
    yield 'measure-size-instead-of-path', me[:-1] + ['--size', '1G']
    yield 'measure-image-opts', _insert(me, 2, '--image-opts')
    yield 'convert-t-none', _insert(cv, 2, '-t', 'none')
    yield 'convert-T-none', _insert(cv, 2, '-T', 'none')
    yield 'convert-B-backing', _insert(cv, 2, '-B', '/etc/x')
    yield 'convert-compressed-B-backing', _insert(cvc, 2, '-B', '/etc/x')
    yield 'convert-n-no-create', _insert(cv, 2, '-n')
    yield 'convert-o-options', _insert(cv, 2, '-o', 'data_file=/etc/shadow')
    yield 'convert-S-sparse', _insert(cv, 2, '-S', '0')
    yield 'convert-target-image-opts', _insert(cv, 2, '--target-image-opts')
    yield 'convert-image-opts', _insert(cv, 2, '--image-opts')
    yield 'convert-two-sources', _insert(cv, len(cv) - 1, DISK)
    yield 'convert-compress-twice', _insert(cvc, 7, '-c')
    yield 'convert-l-snapshot', _insert(cv, 2, '-l', 'snapshot.name=x')
    cvz = SHAPES['convert-compressed-zstd']
    yield 'convert-zstd-o-data-file', _replace(
        cvz, 'compression_type=zstd', 'data_file=/etc/shadow')
    yield 'convert-zstd-o-two-options', _replace(
        cvz, 'compression_type=zstd',
        'compression_type=zstd,data_file=/etc/shadow')
    yield 'convert-zstd-o-zlib', _replace(
        cvz, 'compression_type=zstd', 'compression_type=zlib')
    yield 'convert-zstd-to-raw', _replace(cvz, 'qcow2', 'raw')
    yield 'convert-zstd-without-c', [a for a in cvz if a != '-c']
    yield 'convert-zstd-o-before-c', (
        cvz[:6] + ['-o', 'compression_type=zstd', '-c'] + cvz[9:])
    yield 'convert-o-zstd-uncompressed', _insert(
        cv, 6, '-o', 'compression_type=zstd')
    yield 'trailing-extra-argument', inf + ['--help']
    # Options swapped for others, so that the argument count is unchanged.
    yield 'info-U-replaced-by-u', _replace(inf, '-U', '-u')
    yield 'info-output-human', _replace(inf, '--output=json', '--output=human')
    yield 'measure-U-replaced-by-image-opts', _replace(
        me, '-U', '--image-opts')
    yield 'convert-W-replaced-by-n', _replace(cv, '-W', '-n')
    yield 'convert-W-replaced-by-U', _replace(cv, '-W', '-U')
    yield 'convert-W-replaced-by-p', _replace(cv, '-W', '-p')
    yield 'convert-c-replaced-by-n', _replace(cvc, '-c', '-n')
    yield 'create-f-replaced-by-o', _replace(cr, '-f', '-o')
    yield 'create-overlay-b-replaced-by-B', _replace(co, '-b', '-B')
    # Out of range or malformed coroutine counts.
    for n in ('0', '17', '32', '100', '01', '-1', '1a', '16\n16', ''):
        yield 'convert-m-%r' % n, _replace(cv, '16', n)
    # Options out of order, same arguments.
    yield 'convert-c-after-W', cv[:6] + ['-W', '-c'] + cv[7:]
    yield 'info-output-before-U', [inf[0], inf[1], inf[5], inf[2], inf[3],
                                   inf[4], inf[6]]
    # Missing arguments.
    yield 'info-without-U', [a for a in inf if a != '-U']
    yield 'info-without-format', [a for a in inf if a not in ('-f', 'raw')]
    yield 'convert-without-W', [a for a in cv if a != '-W']
    yield 'create-overlay-without-F', [
        a for a in co if a not in ('-F', 'raw')]


OTHER_FORMATS = ['vmdk', 'vpc', 'luks', 'qed', 'vhdx', 'vdi', 'parallels',
                 'dmg', 'host_device', 'file', 'nbd', 'rawx', 'xraw',
                 'qcow2x', 'qcow', 'RAW', 'raw|qcow2', 'raw\nvmdk', '']


def _format_cases():
    for fmt in OTHER_FORMATS:
        yield 'create-overlay-F-%r' % fmt, qemu_img.create_overlay_cmd(
            OVERLAY, BASE, fmt, 1024)
        yield 'create-overlay-f-%r' % fmt, _replace(
            SHAPES['create-overlay'], 'qcow2', fmt)
        yield 'create-f-%r' % fmt, _replace(SHAPES['create'], 'qcow2', fmt)
        yield 'info-f-%r' % fmt, qemu_img.info_cmd(DISK, fmt)
        yield 'measure-f-%r' % fmt, qemu_img.measure_cmd(DISK, fmt, 'raw')
        yield 'measure-O-%r' % fmt, qemu_img.measure_cmd(DISK, 'raw', fmt)
        yield 'convert-f-%r' % fmt, qemu_img.convert_cmd(
            DISK, fmt, IMAGE, 'raw')
        yield 'convert-O-%r' % fmt, qemu_img.convert_cmd(
            DISK, 'raw', IMAGE, fmt, compress=True)
    # create always makes a qcow2 overlay.
    yield 'create-raw', _replace(SHAPES['create'], 'qcow2', 'raw')
    yield 'create-overlay-raw', [
        a if i != 3 else 'raw'
        for i, a in enumerate(SHAPES['create-overlay'])]


BAD_SIZES = ['10G', '1k', '1K', '1M', '0x10', '1e9', '-1', '+1', ' 1', '1 ',
             '1.5', '0', '', '1\n2', 'inf']


def _size_cases():
    for size in BAD_SIZES:
        yield 'create-size-%r' % size, qemu_img.create_cmd(OVERLAY, size)
        yield 'create-overlay-size-%r' % size, qemu_img.create_overlay_cmd(
            OVERLAY, BASE, 'qcow2', size)
    yield 'create-without-size', SHAPES['create'][:-1]
    yield 'create-overlay-without-size', SHAPES['create-overlay'][:-1]


def _cases(gen):
    cases = list(gen())
    return {'argvalues': [c[1] for c in cases],
            'ids': [c[0] for c in cases]}


@pytest.mark.parametrize('cmd', **_cases(_bad_path_cases))
def test_path_outside_the_allowed_places_is_refused(rootwrap, cmd):
    _refused(rootwrap, cmd)


@pytest.mark.parametrize('cmd', list(WRONG_ROLE.values()),
                         ids=list(WRONG_ROLE))
def test_allowed_path_in_a_role_it_does_not_have_is_refused(rootwrap, cmd):
    _refused(rootwrap, cmd)


@pytest.mark.parametrize('cmd', **_cases(_subcommand_cases))
def test_other_sub_command_or_executable_is_refused(rootwrap, cmd):
    _refused(rootwrap, cmd)


@pytest.mark.parametrize('cmd', **_cases(_option_cases))
def test_extra_missing_or_reordered_option_is_refused(rootwrap, cmd):
    _refused(rootwrap, cmd)


@pytest.mark.parametrize('cmd', **_cases(_format_cases))
def test_format_other_than_raw_or_qcow2_is_refused(rootwrap, cmd):
    _refused(rootwrap, cmd)


@pytest.mark.parametrize('cmd', **_cases(_size_cases))
def test_size_that_is_not_a_plain_byte_count_is_refused(rootwrap, cmd):
    _refused(rootwrap, cmd)
