"""devstack/plugin.sh, run the way devstack runs it, on a fake devstack host.

``fake_devstack.sh`` plays stack.sh, unstack.sh and clean.sh: it sources
devstack/settings, then sources plugin.sh once per phase under errexit,
with devstack's functions (real ini files, real service lists; pip
commands are recorded, not run).  The host lives under pytest's tmp_path:

  etc/nova/                 NOVA_CONF_DIR: nova.conf as devstack's
                            create_nova_conf leaves it, rootwrap.conf and
                            rootwrap.d/ as configure_rootwrap leaves them
  opt/stack/nova/nova/      an editable nova checkout ($DEST/nova): the
                            real nova package, linked file by file, with a
                            nova/virt/ of its own
  opt/stack/data/venv/      the global venv ($DEVSTACK_VENV, $PYTHON), whose
                            site-packages holds .pth files for the checkout,
                            this repository (what "pip install -e" makes)
                            and nova's libraries, plus the copy of
                            nova/virt/snapdriver that pip puts there, which
                            this nova never sees
  opt/stack/tempest/        tempest.conf and a .tox/tempest venv whose pip
                            records its arguments

The instances path is devstack's, /opt/stack/data/nova/instances (only
written into files; nothing is created there).  Nothing outside tmp_path
is written: Python writes no bytecode, /etc/nova is never touched.
"""

import configparser
import importlib.util
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import sysconfig

from oslo_rootwrap import wrapper
import pytest

from nova_snapdriver import qemu_img

REPO = pathlib.Path(__file__).resolve().parents[2]
FAKE_DEVSTACK = REPO / 'tests' / 'devstack' / 'fake_devstack.sh'
REEXPORT_SRC = REPO / 'nova' / 'virt' / 'snapdriver' / '__init__.py'
FILTERS_SRC = REPO / 'etc' / 'nova' / 'rootwrap.d' / 'snapdriver.filters'
MARKER = ('# Installed by the nova-snapdriver devstack plugin '
          '(devstack/plugin.sh); clean.sh removes it.')

DEVSTACK_INSTANCES = '/opt/stack/data/nova/instances'
INSTANCE_UUID = '6f1b1a3c-2b5e-4c8e-9a0d-3e2f1c4b5a69'
IMAGE_UUID = 'c0ffee00-1234-4abc-8def-0123456789ab'
SHA1 = 'da39a3ee5e6b4b0d3255bfef95601890afd80709'

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason='the plugin installs the rootwrap filters owned by root')


# --- the fake devstack host -------------------------------------------------

def _link_tree(src, dst, skip=()):
    """dst/<name> -> src/<name> for every entry of src except skip."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name not in skip:
            (dst / entry.name).symlink_to(entry)


class Host(object):
    """A devstack host in a directory, and the commands to drive it."""

    def __init__(self, root):
        self.root = root
        self.dest = root / 'opt' / 'stack'
        self.conf_dir = root / 'etc' / 'nova'
        self.nova_conf = self.conf_dir / 'nova.conf'
        self.nova_cpu_conf = self.conf_dir / 'nova-cpu.conf'
        self.rootwrap_conf = self.conf_dir / 'rootwrap.conf'
        self.filters_dir = self.conf_dir / 'rootwrap.d'
        self.our_filters = self.filters_dir / 'snapdriver.filters'
        self.nova_checkout = self.dest / 'nova'
        self.virt_dir = self.nova_checkout / 'nova' / 'virt'
        self.reexport = self.virt_dir / 'snapdriver' / '__init__.py'
        self.venv = self.dest / 'data' / 'venv'
        self.python = self.venv / 'bin' / 'python3'
        self.tempest_dir = self.dest / 'tempest'
        self.tempest_conf = self.tempest_dir / 'etc' / 'tempest.conf'
        self.tempest_venv = self.tempest_dir / '.tox' / 'tempest'
        self.log = root / 'devstack.log'
        self.localrc = root / 'localrc'
        self.env = self._env()

    # building it

    def build(self):
        self._nova_conf()
        self._rootwrap()
        self._nova_checkout()
        self._venv()
        self._tempest()
        self.localrc.write_text('')
        return self

    def _nova_conf(self):
        # What create_nova_conf and configure_nova_hypervisor leave.
        self.conf_dir.mkdir(parents=True)
        self.nova_conf.write_text(
            '[DEFAULT]\n'
            'compute_driver = libvirt.LibvirtDriver\n'
            'instances_path = %s\n'
            'state_path = %s\n'
            '\n'
            '[libvirt]\n'
            'virt_type = qemu\n'
            'cpu_mode = custom\n' % (DEVSTACK_INSTANCES, self.root / 'state'))

    def _rootwrap(self):
        # What configure_rootwrap nova leaves: nova's filters, and
        # filters_path pointing at rootwrap.d.
        self.filters_dir.mkdir()
        (self.filters_dir / 'compute.filters').write_text(
            '[Filters]\n'
            'privsep-rootwrap-sys_admin: RegExpFilter, privsep-helper, root, '
            'privsep-helper, --config-file, /etc/(?!\\.\\.).*, '
            '--privsep_context, nova.privsep.sys_admin_pctxt, '
            '--privsep_sock_path, /tmp/.*\n')
        self.rootwrap_conf.write_text(
            '[DEFAULT]\n'
            'filters_path=%s\n'
            '#exec_dirs=/sbin,/usr/sbin,/bin,/usr/bin\n'
            'use_syslog=False\n' % self.filters_dir)

    def _nova_checkout(self):
        # The real nova, reached through $DEST/nova: nova.virt.__path__ is
        # then $DEST/nova/nova/virt, as with devstack's editable nova.
        spec = importlib.util.find_spec('nova')
        real = pathlib.Path(spec.origin).parent
        _link_tree(real, self.nova_checkout / 'nova', skip=('virt',))
        _link_tree(real / 'virt', self.virt_dir, skip=('snapdriver',))

    def _venv(self):
        subprocess.run([sys.executable, '-m', 'venv', '--without-pip',
                        str(self.venv)], check=True)
        out = subprocess.run(
            [str(self.python), '-c',
             'import sysconfig; print(sysconfig.get_path("purelib"))'],
            check=True, capture_output=True, text=True, env=self.env)
        site = pathlib.Path(out.stdout.strip())
        # .pth files are read in name order: nova's checkout, this
        # repository, then nova's libraries (the test's own environment).
        (site / '__editable__.nova.pth').write_text(
            '%s\n' % self.nova_checkout)
        (site / '__editable__.nova_snapdriver.pth').write_text('%s\n' % REPO)
        (site / 'zz_nova_libraries.pth').write_text(
            'import site; site.addsitedir(%r)\n'
            % sysconfig.get_path('purelib'))
        # The copy of the re-export that pip installs into site-packages.
        pip_copy = site / 'nova' / 'virt' / 'snapdriver' / '__init__.py'
        pip_copy.parent.mkdir(parents=True)
        shutil.copy(REEXPORT_SRC, pip_copy)
        self.pip_copy = pip_copy

    def _tempest(self):
        self.tempest_conf.parent.mkdir(parents=True)
        self.tempest_conf.write_text(
            '[DEFAULT]\nlog_file = tempest.log\n\n'
            '[compute]\nimage_ref = 1d5f3b0e\n')
        self.tempest_pip = self.tempest_venv / 'bin' / 'pip'
        self.tempest_pip.parent.mkdir(parents=True)
        self.tempest_pip.write_text(
            '#!/bin/sh\necho "tempest pip: $*" >> %s\n' % self.log)
        self.tempest_pip.chmod(stat.S_IRWXU)

    def _env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('PYTHON', 'VIRTUAL_ENV', 'SNAPDRIVER_',
                                    'NOVA_', 'TEMPEST_', 'PIP_'))}
        env.update({
            'PYTHONDONTWRITEBYTECODE': '1',
            'TMPDIR': str(self.root),
            'PLUGIN_DIR': str(REPO),
            'DEST': str(self.dest),
            'DATA_DIR': str(self.dest / 'data'),
            'ENABLED_SERVICES': 'key,g-api,n-api,n-cond,n-sch,n-cpu,tempest',
            'VIRT_DRIVER': 'libvirt',
            'NOVA_CONF_DIR': str(self.conf_dir),
            'NOVA_CONF': str(self.nova_conf),
            'NOVA_CPU_CONF': str(self.nova_cpu_conf),
            'NOVA_INSTANCES_PATH': DEVSTACK_INSTANCES,
            'TEMPEST_DIR': str(self.tempest_dir),
            'TEMPEST_CONFIG': str(self.tempest_conf),
            'PYTHON': str(self.python),
            'GLOBAL_VENV': 'True',
            'DEVSTACK_VENV': str(self.venv),
            'REQUIREMENTS_DIR': str(self.dest / 'requirements'),
            'FAKE_DEVSTACK_LOG': str(self.log),
            'FAKE_DEVSTACK_LOCALRC': str(self.localrc),
            'FAKE_DEVSTACK_XTRACE': str(self.root / 'xtrace.log'),
        })
        return env

    # driving it

    def devstack(self, command, check=True, **env):
        """Run fake_devstack.sh <command>; return the CompletedProcess."""
        result = subprocess.run(
            ['bash', str(FAKE_DEVSTACK), command], capture_output=True,
            text=True, env=dict(self.env, **env), timeout=120)
        if check and result.returncode != 0:
            pytest.fail('fake_devstack.sh %s failed (%d):\n%s\n%s' % (
                command, result.returncode, result.stdout, result.stderr))
        return result

    def run_python(self, code, *args):
        """Run code with devstack's python (the one nova runs under)."""
        result = subprocess.run(
            [str(self.python), '-c', code] + [str(a) for a in args],
            capture_output=True, text=True, env=self.env, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def reexport_origin(self):
        return self.run_python(
            'import importlib.util as u\n'
            's = u.find_spec("nova.virt.snapdriver")\n'
            'print(s.origin if s else "")')

    def log_lines(self, prefix):
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines()
                if line.startswith(prefix)]


def read_ini(path):
    # [DEFAULT] as a section like the others, as oslo.config reads it.
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, default_section='no default')
    with open(path) as f:
        parser.read_file(f)
    return parser


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path).build()


# --- rootwrap ---------------------------------------------------------------

def _rootwrap_filters(host):
    """Every filter nova-rootwrap would load with the host's rootwrap.conf."""
    raw = configparser.RawConfigParser()
    raw.read(str(host.rootwrap_conf))
    config = wrapper.RootwrapConfig(raw)
    return wrapper.load_filters(config.filters_path)


def _commands(instances, snapshots):
    """Every command shape the driver runs, on the given directories."""
    disk = '%s/%s/disk' % (instances, INSTANCE_UUID)
    base = '%s/_base/%s' % (instances, SHA1)
    overlay = '%s/%s/overlay.qcow2' % (snapshots, IMAGE_UUID)
    image = '%s/%s/image' % (snapshots, IMAGE_UUID)
    return [
        qemu_img.create_overlay_cmd(overlay, base, 'raw', 1073741824),
        qemu_img.create_cmd(overlay, 1073741824),
        qemu_img.info_cmd(disk, 'qcow2'),
        qemu_img.info_cmd(base, 'raw'),
        qemu_img.info_cmd(overlay, 'qcow2'),
        qemu_img.info_cmd(image, 'qcow2'),
        qemu_img.measure_cmd(disk, 'qcow2', 'raw'),
        qemu_img.convert_cmd(overlay, 'qcow2', image, 'qcow2', coroutines=8),
        qemu_img.convert_cmd(disk, 'qcow2', image, 'raw', compress=True),
    ]


@pytest.fixture
def exec_dirs(tmp_path):
    # rootwrap only checks that the executable exists; nothing runs.
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'qemu-img').write_text('#!/bin/sh\nexit 1\n')
    (bin_dir / 'qemu-img').chmod(stat.S_IRWXU)
    return [str(bin_dir)]


def _allowed(filters, cmd, exec_dirs):
    try:
        f = wrapper.match_filter(filters, list(cmd), exec_dirs=exec_dirs)
    except wrapper.NoFilterMatched:
        return False
    return f.name.startswith('snapdriver-')


# --- stack ------------------------------------------------------------------

def test_editable_nova_does_not_see_the_reexport_pip_installs(host):
    # The problem the plugin solves: nova is $DEST/nova, so the copy of
    # nova/virt/snapdriver in site-packages is never imported.
    assert host.pip_copy.exists()
    assert host.run_python(
        'import nova.virt; print(nova.virt.__path__[0])') == str(host.virt_dir)
    assert host.reexport_origin() == ''


def test_stack_makes_nova_compute_load_the_driver(host):
    had_opt_stack = pathlib.Path('/opt/stack').exists()
    host.devstack('stack')

    # The re-export sits in nova.virt's own directory and is what nova
    # imports; the copy pip made is untouched.
    assert host.reexport_origin() == str(host.reexport)
    text = host.reexport.read_text()
    assert text.splitlines()[0] == MARKER
    assert text.endswith(REEXPORT_SRC.read_text())
    assert host.pip_copy.read_text() == REEXPORT_SRC.read_text()

    # n-cpu's configuration (nova-cpu.conf, made from nova.conf when n-cpu
    # starts) names the driver and our options; the rest is devstack's.
    for path in (host.nova_conf, host.nova_cpu_conf):
        conf = read_ini(path)
        assert conf['DEFAULT']['compute_driver'] == (
            'snapdriver.SnapLibvirtDriver')
        assert dict(conf['snapdriver']) == {
            'block_job_timeout': '180', 'block_job_bandwidth': '0'}
        assert conf['DEFAULT']['instances_path'] == DEVSTACK_INSTANCES
        assert dict(conf['libvirt']) == {
            'virt_type': 'qemu', 'cpu_mode': 'custom'}

    # nova's own loader, with nova's own config parsing of nova-cpu.conf,
    # under the python nova runs with: the driver class from this repo.
    loaded = json.loads(host.run_python(
        'import json, sys\n'
        'import nova.conf\n'
        'from nova.virt import driver, fake\n'
        'CONF = nova.conf.CONF\n'
        'CONF(["--config-file", sys.argv[1]], project="nova")\n'
        'd = driver.load_compute_driver(fake.FakeVirtAPI(),\n'
        '                               CONF.compute_driver)\n'
        'print(json.dumps({\n'
        '    "class": "%s.%s" % (type(d).__module__, type(d).__name__),\n'
        '    "driver_file": sys.modules[type(d).__module__].__file__,\n'
        '    "reexport_file": sys.modules["nova.virt.snapdriver"].__file__,\n'
        '    "timeout": CONF.snapdriver.block_job_timeout,\n'
        '    "bandwidth": CONF.snapdriver.block_job_bandwidth}))\n',
        host.nova_cpu_conf))
    assert loaded == {
        'class': 'nova_snapdriver.driver.SnapLibvirtDriver',
        'driver_file': str(REPO / 'nova_snapdriver' / 'driver.py'),
        'reexport_file': str(host.reexport),
        'timeout': 180,
        'bandwidth': 0,
    }

    # The package went into nova's environment, editable, without deps.
    assert host.log_lines('pip_install:') == [
        'pip_install: %s/bin/pip install -c %s/requirements/'
        'upper-constraints.txt --no-deps -e %s' % (host.venv, host.dest, REPO)]

    # tempest: our plugin's flags, and the plugin in tempest's venv.
    tempest = read_ini(host.tempest_conf)
    assert dict(tempest['snapdriver_feature_enabled']) == {
        'live_snapshot': 'True', 'paused_snapshot': 'True',
        'stopped_snapshot': 'True'}
    assert tempest['compute']['image_ref'] == '1d5f3b0e'
    assert host.log_lines('tempest pip:') == [
        'tempest pip: install --no-deps -e %s' % REPO]

    # Phases ran in devstack's order; nothing was created on the real
    # host's devstack paths.
    assert host.log_lines('phase:') == [
        'phase: stack pre-install', 'phase: stack install',
        'phase: stack post-config', 'phase: stack extra',
        'phase: stack test-config']
    assert pathlib.Path('/opt/stack').exists() == had_opt_stack


def test_stack_installs_filters_for_devstacks_instances_path(host, exec_dirs):
    host.devstack('stack')

    st = host.our_filters.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    lines = host.our_filters.read_text().splitlines()
    assert lines[0] == MARKER
    rules = [line for line in lines if line and not line.startswith('#')]
    assert rules[0] == '[Filters]'
    assert not any('/var/lib/nova' in line for line in rules)
    assert all('/opt/stack/data/nova/instances/' in line
               for line in rules[1:])
    # nova's own filters are still there.
    assert (host.filters_dir / 'compute.filters').exists()

    # Loaded the way nova-rootwrap loads them (rootwrap.conf's
    # filters_path): the driver's commands on devstack's paths pass, the
    # same commands on nova's default path, which the file in the
    # repository allows, do not.
    filters = _rootwrap_filters(host)
    names = {f.name for f in filters}
    assert 'privsep-rootwrap-sys_admin' in names
    assert len([n for n in names if n.startswith('snapdriver-')]) == \
        _shipped_filter_count()
    devstack = DEVSTACK_INSTANCES
    for cmd in _commands(devstack, devstack + '/snapshots'):
        assert _allowed(filters, cmd, exec_dirs), cmd
    for cmd in _commands('/var/lib/nova/instances',
                         '/var/lib/nova/instances/snapshots'):
        assert not _allowed(filters, cmd, exec_dirs), cmd
    for cmd in _commands('/opt/stack/data/nova/instancesX',
                         devstack + '/../snapshots'):
        assert not _allowed(filters, cmd, exec_dirs), cmd


def test_settings_from_local_conf_reach_nova_and_the_filters(
        host, exec_dirs):
    # An instances path with regex characters in it: the filters must
    # match it literally.
    instances = '/srv/nova.d/inst+ances'
    host.devstack(
        'stack', NOVA_INSTANCES_PATH=instances + '/',
        SNAPDRIVER_BLOCK_JOB_TIMEOUT='600',
        SNAPDRIVER_BLOCK_JOB_BANDWIDTH='50',
        SNAPDRIVER_CONVERT_COROUTINES='4',
        SNAPDRIVER_TEMPEST_PAUSED_SNAPSHOT='no')

    conf = read_ini(host.nova_cpu_conf)
    assert dict(conf['snapdriver']) == {
        'block_job_timeout': '600', 'block_job_bandwidth': '50',
        'convert_coroutines': '4'}
    tempest = read_ini(host.tempest_conf)
    assert dict(tempest['snapdriver_feature_enabled']) == {
        'live_snapshot': 'True', 'paused_snapshot': 'False',
        'stopped_snapshot': 'True'}

    filters = _rootwrap_filters(host)
    for cmd in _commands(instances, instances + '/snapshots'):
        assert _allowed(filters, cmd, exec_dirs), cmd
    for other in ('/srv/novaXd/inst+ances', '/srv/nova.d/innstances'):
        for cmd in _commands(other, other + '/snapshots'):
            assert not _allowed(filters, cmd, exec_dirs), cmd


def test_an_instances_path_rootwrap_cannot_express_stops_stack(host):
    result = host.devstack('stack', check=False,
                           NOVA_INSTANCES_PATH='/srv/a,b')
    assert result.returncode != 0
    assert 'without a comma' in result.stderr
    assert not host.our_filters.exists()


def test_a_venv_of_novas_own_is_where_the_package_goes(host):
    # USE_VENV=True: lib/nova sets PROJECT_VENV[nova], and $PYTHON is not
    # the python nova runs under.
    host.localrc.write_text('PROJECT_VENV[nova]=%s\n' % host.venv)
    host.devstack('stack', GLOBAL_VENV='False',
                  PYTHON=str(host.root / 'no-such-python'))
    assert host.reexport_origin() == str(host.reexport)
    assert host.log_lines('pip_install:') == [
        'pip_install: %s/bin/pip install -c %s/requirements/'
        'upper-constraints.txt --no-deps -e %s' % (host.venv, host.dest, REPO)]


def test_stack_twice_changes_nothing(host):
    host.devstack('stack')
    files = [host.nova_conf, host.nova_cpu_conf, host.reexport,
             host.our_filters, host.tempest_conf]
    first = [f.read_text() for f in files]
    host.devstack('stack')
    assert [f.read_text() for f in files] == first


def test_a_reexport_nova_already_imports_is_left_alone(host):
    # A nova installed where pip put the re-export (packaged nova): the
    # plugin neither replaces it nor, at clean, removes it.
    host.reexport.parent.mkdir()
    shutil.copy(REEXPORT_SRC, host.reexport)
    result = host.devstack('stack')
    assert 'importable from %s already' % host.reexport in result.stdout
    assert host.reexport.read_text() == REEXPORT_SRC.read_text()
    assert read_ini(host.nova_conf)['DEFAULT']['compute_driver'] == (
        'snapdriver.SnapLibvirtDriver')

    host.devstack('clean')
    assert host.reexport.read_text() == REEXPORT_SRC.read_text()
    assert not host.our_filters.exists()


# --- unstack, clean ---------------------------------------------------------

def test_unstack_stops_nothing_and_clean_removes_what_stack_installed(host):
    host.devstack('stack')
    # nova-compute ran: Python cached the re-export's bytecode.
    cache = host.reexport.parent / '__pycache__'
    cache.mkdir()
    (cache / '__init__.cpython-311.pyc').write_bytes(b'\0')
    before = sorted(p for p in host.root.rglob('*')
                    if p != host.log and 'xtrace' not in p.name)

    host.devstack('unstack')
    assert sorted(p for p in host.root.rglob('*')
                  if p != host.log and 'xtrace' not in p.name) == before

    host.devstack('clean')
    assert not host.reexport.parent.exists()
    assert not host.our_filters.exists()
    assert host.reexport_origin() == ''
    # Everything else stays: nova's filters, nova's checkout, pip's copy,
    # the configuration (devstack's clean removes that itself).
    assert (host.filters_dir / 'compute.filters').exists()
    assert (host.virt_dir / 'libvirt').exists()
    assert host.pip_copy.exists()
    assert host.nova_conf.exists()

    # A second clean finds nothing to do.
    host.devstack('clean')


# --- which nodes ------------------------------------------------------------

def test_disable_service_in_local_conf_turns_the_plugin_off(host):
    host.localrc.write_text('disable_service snapdriver\n')
    nova_conf = host.nova_conf.read_text()
    tempest_conf = host.tempest_conf.read_text()
    host.devstack('stack')
    assert host.nova_cpu_conf.read_text() == nova_conf
    assert host.tempest_conf.read_text() == tempest_conf
    assert not host.reexport.exists()
    assert not host.our_filters.exists()
    assert host.log_lines('pip_install:') == []
    assert host.log_lines('tempest pip:') == []


def test_a_node_without_n_cpu_only_configures_tempest(host):
    nova_conf = host.nova_conf.read_text()
    host.devstack('stack', ENABLED_SERVICES='key,n-api,n-cond,tempest')
    assert host.nova_conf.read_text() == nova_conf
    assert not host.reexport.exists()
    assert not host.our_filters.exists()
    assert host.log_lines('pip_install:') == []
    assert 'snapdriver_feature_enabled' in read_ini(host.tempest_conf)


def test_a_compute_node_without_tempest_leaves_tempest_alone(host):
    tempest_conf = host.tempest_conf.read_text()
    host.devstack('stack', ENABLED_SERVICES='n-cpu')
    assert host.tempest_conf.read_text() == tempest_conf
    assert host.log_lines('tempest pip:') == []
    assert read_ini(host.nova_cpu_conf)['DEFAULT']['compute_driver'] == (
        'snapdriver.SnapLibvirtDriver')


def test_no_tempest_venv_is_a_warning(host):
    shutil.rmtree(host.tempest_venv)
    host.devstack('stack')
    assert host.log_lines('warn: nova-snapdriver: no tempest venv at %s'
                          % host.tempest_venv)
    assert 'snapdriver_feature_enabled' in read_ini(host.tempest_conf)


def test_another_virt_driver_stops_stack(host):
    result = host.devstack('stack', check=False, VIRT_DRIVER='ironic')
    assert result.returncode != 0
    assert "it needs VIRT_DRIVER=libvirt, not 'ironic'" in result.stderr
    assert host.log_lines('pip_install:') == []


def test_plugin_is_valid_bash():
    subprocess.run(['bash', '-n', str(REPO / 'devstack' / 'plugin.sh')],
                   check=True)


def _shipped_filter_count():
    """How many filters the repository's filters file defines."""
    path = os.path.join(REPO, 'etc', 'nova', 'rootwrap.d',
                        'snapdriver.filters')
    with open(path) as f:
        return sum(1 for line in f if line.startswith('snapdriver-'))
