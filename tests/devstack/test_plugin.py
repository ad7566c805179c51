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

"""devstack/plugin.sh, run the way devstack runs it, on a fake devstack host.

``fake_devstack.sh`` plays stack.sh, unstack.sh and clean.sh: it sources
devstack/settings, then sources plugin.sh once per phase under errexit,
with devstack's functions (real ini files, real service lists; pip
commands are recorded, not run).

Like stack.sh, it runs as a non-root stack user who may sudo: here a
throwaway system user made for this module (and deleted after), with the
ambient capabilities CAP_SETUID and CAP_SETGID only, so that its own
commands keep its uid and file permissions and the fake ``sudo`` turns
only the command it is given into root (no sudo package needed).  nova's
python runs as that user too, as nova-compute does in devstack.

The host lives in a fresh directory under /tmp (pytest's tmp_path is not
reachable by another user), owned as devstack leaves it:

  etc/nova/                 NOVA_CONF_DIR, the stack user's: nova.conf as
                            create_nova_conf leaves it; rootwrap.conf and
                            rootwrap.d/, root's, as configure_rootwrap
                            leaves them
  opt/stack/                DEST, the stack user's:
    nova/nova/              an editable nova checkout: the real nova
                            package, linked file by file, with a nova/virt/
                            of its own
    data/nova/instances/    state_path and instances_path (init_nova and
                            configure_nova make them the stack user's)
    data/venv/              the global venv ($DEVSTACK_VENV, $PYTHON), whose
                            site-packages holds .pth files for the checkout,
                            this repository (what "pip install -e" makes)
                            and nova's libraries, plus the copy of
                            nova/virt/snapdriver and the
                            nova-snapdriver-manage script pip puts there
    tempest/                tempest.conf and a .tox/tempest venv whose pip
                            records its arguments
  usr/local/bin/            root's: where stack.sh links nova-manage

Nothing outside it is written: Python writes no bytecode, /etc/nova is
never touched.
"""

import configparser
import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time

from oslo_rootwrap import wrapper
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FAKE_DEVSTACK = REPO / 'tests' / 'devstack' / 'fake_devstack.sh'
REEXPORT_SRC = REPO / 'nova' / 'virt' / 'snapdriver' / '__init__.py'
MARKER = ('# Installed by the nova-snapdriver devstack plugin '
          '(devstack/plugin.sh); clean.sh removes it.')
# What earlier versions of the plugin installed into rootwrap.d.
STALE_FILTERS = (
    MARKER + '\n'
    '# Copied from /opt/stack/nova-snapdriver/etc/nova/rootwrap.d/'
    'snapdriver.filters\n'
    '[Filters]\n'
    'snapdriver-qemu-img-convert: RegExpFilter, qemu-img, root, qemu-img, '
    'convert, .*\n')

# setpriv's capability names: the fake sudo's way to root, nothing else.
SUDO_CAPS = '+setuid,+setgid'

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason='makes a throwaway stack user and runs the plugin as that user')


# --- the stack user ---------------------------------------------------------

def _retry(cmd):
    # useradd and userdel fail while another process holds /etc/passwd's
    # lock (other test runs make users too).
    for _ in range(30):
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError('%s failed: %s' % (' '.join(cmd), result.stderr))


class StackUser(object):
    def __init__(self, name):
        self.name = name
        out = subprocess.run(['id', '-u', name], capture_output=True,
                             text=True, check=True).stdout
        self.uid = int(out)
        out = subprocess.run(['id', '-g', name], capture_output=True,
                             text=True, check=True).stdout
        self.gid = int(out)

    def argv(self, cmd, caps=False):
        """cmd as this user; with caps, able to become root (fake sudo)."""
        prefix = ['setpriv', '--reuid=%d' % self.uid,
                  '--regid=%d' % self.gid, '--init-groups']
        if caps:
            prefix += ['--inh-caps=' + SUDO_CAPS,
                       '--ambient-caps=' + SUDO_CAPS]
        # setpriv looks up and execs its command before the kernel drops
        # root's capabilities: env is that command, so that cmd itself is
        # looked up with the user's permissions only.
        return prefix + ['--', 'env', '--'] + [str(c) for c in cmd]


@pytest.fixture(scope='module')
def stack_user():
    name = 'snapdrv-stack-%d' % os.getpid()
    _retry(['useradd', '--system', '--user-group', '--no-create-home',
            '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin',
            name])
    try:
        yield StackUser(name)
    finally:
        _retry(['userdel', name])


# --- the fake devstack host -------------------------------------------------

def _link_tree(src, dst, skip=()):
    """dst/<name> -> src/<name> for every entry of src except skip."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name not in skip:
            (dst / entry.name).symlink_to(entry)


def _chown_tree(top, uid, gid):
    """chown top and everything below it, never through a symlink."""
    os.lchown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def _owners(top):
    """{path: uid} of everything under top."""
    return {p: p.lstat().st_uid for p in top.rglob('*')}


class Host(object):
    """A devstack host in a directory, and the commands to drive it."""

    def __init__(self, root, user):
        self.root = root
        self.user = user
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
        self.state_path = self.dest / 'data' / 'nova'
        self.instances = self.state_path / 'instances'
        self.snapshots = self.instances / 'snapshots'
        self.journal = self.state_path / 'snapdriver-journal'
        self.venv = self.dest / 'data' / 'venv'
        self.python = self.venv / 'bin' / 'python3'
        self.manage = self.venv / 'bin' / 'nova-snapdriver-manage'
        self.link_dir = root / 'usr' / 'local' / 'bin'
        self.manage_link = self.link_dir / 'nova-snapdriver-manage'
        self.tempest_dir = self.dest / 'tempest'
        self.tempest_conf = self.tempest_dir / 'etc' / 'tempest.conf'
        self.tempest_venv = self.tempest_dir / '.tox' / 'tempest'
        self.home = root / 'home' / user.name
        self.log = root / 'devstack.log'
        self.xtrace = root / 'xtrace.log'
        self.localrc = root / 'localrc'
        self.env = self._env()

    # building it

    def build(self):
        self.home.mkdir(parents=True)
        self._nova_conf()
        self._rootwrap()
        self._nova_checkout()
        self._venv()
        self._tempest()
        self.localrc.write_text('')
        for path in (self.log, self.xtrace):
            path.write_text('')
        self.link_dir.mkdir(parents=True)
        (self.root / 'tmp').mkdir(mode=0o1777)
        (self.root / 'tmp').chmod(0o1777)
        self.instances.mkdir(parents=True)
        # Owned as devstack leaves them: the stack user's DEST, NOVA_CONF_DIR
        # (nova.conf included) and home; root's rootwrap files and
        # /usr/local/bin.  The links into the real nova are not followed.
        uid, gid = self.user.uid, self.user.gid
        for top in (self.dest, self.home, self.log, self.xtrace,
                    self.localrc):
            _chown_tree(top, uid, gid)
        os.lchown(self.conf_dir, uid, gid)
        os.lchown(self.nova_conf, uid, gid)
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
            'cpu_mode = custom\n' % (self.instances, self.state_path))

    def _rootwrap(self, *extra_dirs):
        # What configure_rootwrap nova leaves: nova's filters, and
        # filters_path pointing at rootwrap.d.
        self.filters_dir.mkdir(exist_ok=True)
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
            'use_syslog=False\n'
            % ','.join(str(d) for d in (self.filters_dir,) + extra_dirs))

    def _nova_checkout(self):
        # The real nova, reached through $DEST/nova: nova.virt.__path__ is
        # then $DEST/nova/nova/virt, as with devstack's editable nova.
        spec = importlib.util.find_spec('nova')
        real = pathlib.Path(spec.origin).parent
        _link_tree(real, self.nova_checkout / 'nova', skip=('virt',))
        _link_tree(real / 'virt', self.virt_dir, skip=('snapdriver',))

    def _base_python(self):
        """A python of this one's version that the stack user can run.

        The test's own may live under /root (pyenv), which no other user
        can reach; Debian's /usr/bin/python3 then stands in.
        """
        version = '%d.%d' % sys.version_info[:2]
        for python in (os.path.realpath(sys._base_executable),
                       '/usr/bin/python3'):
            result = subprocess.run(
                self.user.argv([python, '-c',
                                'import sys; print("%d.%d" % '
                                'sys.version_info[:2])']),
                capture_output=True, text=True)
            if result.returncode == 0 and result.stdout.strip() == version:
                return python
        pytest.fail('no python %s the stack user %s can run'
                    % (version, self.user.name))

    def _venv(self):
        subprocess.run([self._base_python(), '-m', 'venv', '--without-pip',
                        str(self.venv)], check=True)
        out = subprocess.run(
            [str(self.python), '-c',
             'import sysconfig; print(sysconfig.get_path("purelib"))'],
            check=True, capture_output=True, text=True, env=self.env)
        site = pathlib.Path(out.stdout.strip())
        # .pth files are read in name order: nova's checkout, this
        # repository, then nova's libraries (the test's own environment,
        # which the stack user must be able to read).
        libraries = sysconfig.get_path('purelib')
        if self.run_as_stack(['test', '-r', libraries, '-a', '-x',
                              libraries]).returncode != 0:
            pytest.fail('the stack user %s cannot read nova\'s libraries '
                        'in %s: make the path to them readable (a+rX)'
                        % (self.user.name, libraries))
        (site / '__editable__.nova.pth').write_text(
            '%s\n' % self.nova_checkout)
        (site / '__editable__.nova_snapdriver.pth').write_text('%s\n' % REPO)
        (site / 'zz_nova_libraries.pth').write_text(
            'import site; site.addsitedir(%r)\n' % libraries)
        # The copy of the re-export that pip installs into site-packages.
        pip_copy = site / 'nova' / 'virt' / 'snapdriver' / '__init__.py'
        pip_copy.parent.mkdir(parents=True)
        shutil.copy(REEXPORT_SRC, pip_copy)
        self.pip_copy = pip_copy
        # The console script pip writes for setup.cfg's entry point.
        self.manage.write_text(
            '#!%s\n'
            'import sys\n'
            'from nova_snapdriver.cmd.manage import main\n'
            'if __name__ == "__main__":\n'
            '    sys.exit(main())\n' % self.python)
        self.manage.chmod(0o755)

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
            'HOME': str(self.home),
            'USER': self.user.name,
            'TMPDIR': str(self.root / 'tmp'),
            'PATH': '/usr/sbin:/usr/bin:/sbin:/bin',
            'PLUGIN_DIR': str(REPO),
            'STACK_USER': self.user.name,
            'DEST': str(self.dest),
            'DATA_DIR': str(self.dest / 'data'),
            'ENABLED_SERVICES': 'key,g-api,n-api,n-cond,n-sch,n-cpu,tempest',
            'VIRT_DRIVER': 'libvirt',
            'NOVA_CONF_DIR': str(self.conf_dir),
            'NOVA_CONF': str(self.nova_conf),
            'NOVA_CPU_CONF': str(self.nova_cpu_conf),
            'NOVA_INSTANCES_PATH': str(self.instances),
            'TEMPEST_DIR': str(self.tempest_dir),
            'TEMPEST_CONFIG': str(self.tempest_conf),
            'PYTHON': str(self.python),
            'GLOBAL_VENV': 'True',
            'DEVSTACK_VENV': str(self.venv),
            'REQUIREMENTS_DIR': str(self.dest / 'requirements'),
            'SNAPDRIVER_BIN_LINK_DIR': str(self.link_dir),
            'FAKE_DEVSTACK_LOG': str(self.log),
            'FAKE_DEVSTACK_LOCALRC': str(self.localrc),
            'FAKE_DEVSTACK_XTRACE': str(self.xtrace),
        })
        return env

    # driving it

    def devstack(self, command, check=True, **env):
        """Run fake_devstack.sh <command> as the stack user."""
        result = subprocess.run(
            self.user.argv(['bash', FAKE_DEVSTACK, command], caps=True),
            capture_output=True, text=True, env=dict(self.env, **env),
            cwd=self.home, timeout=180)
        if check and result.returncode != 0:
            pytest.fail('fake_devstack.sh %s failed (%d):\n%s\n%s' % (
                command, result.returncode, result.stdout, result.stderr))
        return result

    def run_as_stack(self, cmd, **env):
        """cmd as the stack user, without any way to root."""
        return subprocess.run(
            self.user.argv(cmd), capture_output=True, text=True,
            env=dict(self.env, **env), cwd=self.home, timeout=120)

    def run_python(self, code, *args):
        """Run code with devstack's python, as nova-compute runs it."""
        result = self.run_as_stack([self.python, '-c', code] + list(args))
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
def host(stack_user):
    root = pathlib.Path(tempfile.mkdtemp(prefix='snapdriver-devstack-'))
    try:
        root.chmod(0o755)
        yield Host(root, stack_user).build()
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(root)


def _rootwrap_filters(host):
    """Every filter nova-rootwrap would load with the host's rootwrap.conf."""
    raw = configparser.RawConfigParser()
    raw.read(str(host.rootwrap_conf))
    config = wrapper.RootwrapConfig(raw)
    return wrapper.load_filters(config.filters_path)


def _mode(path):
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# --- stack ------------------------------------------------------------------

def test_editable_nova_does_not_see_the_reexport_pip_installs(host):
    # The problem the plugin solves: nova is $DEST/nova, so the copy of
    # nova/virt/snapdriver in site-packages is never imported.
    assert host.pip_copy.exists()
    assert host.run_python(
        'import nova.virt; print(nova.virt.__path__[0])') == str(host.virt_dir)
    assert host.reexport_origin() == ''


def test_the_harness_runs_the_plugin_as_the_stack_user(host):
    # What the other tests rest on: fake_devstack.sh runs as the stack user
    # (and refuses root, like stack.sh); only its sudo is root.
    host.localrc.write_text(
        'id -u > "$TMPDIR/user"\n'
        'sudo sh -c \'id -u > "$0"\' "$TMPDIR/sudo"\n'
        'touch /etc/nova-snapdriver-test-$$ 2> /dev/null && exit 9\n'
        'disable_service snapdriver\n')
    host.devstack('stack')
    tmp = host.root / 'tmp'
    assert (tmp / 'user').read_text() == '%d\n' % host.user.uid
    assert (tmp / 'sudo').read_text() == '0\n'
    assert (tmp / 'sudo').stat().st_uid == 0

    result = subprocess.run(['bash', FAKE_DEVSTACK, 'stack'],
                            capture_output=True, text=True, env=host.env)
    assert result.returncode == 2
    assert 'non-root' in result.stderr


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
        assert conf['DEFAULT']['instances_path'] == str(host.instances)
        assert dict(conf['libvirt']) == {
            'virt_type': 'qemu', 'cpu_mode': 'custom'}

    # nova's own loader, with nova's own config parsing of nova-cpu.conf,
    # under the python nova runs with, as the user n-cpu runs as: the
    # driver class from this repo.
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
    # libnbd's binding for stream, from the distribution (importable here
    # already: the venv's python has it linked, so nothing more is done).
    assert host.log_lines('install_package:') == [
        'install_package: python3-libnbd']

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


def test_stack_leaves_nothing_root_owned_that_nova_compute_writes(host):
    before = _owners(host.root)
    host.devstack('stack')

    # The directories the driver writes, as nova.conf names them
    # ([libvirt] snapshots_directory, [snapdriver] journal_path), are the
    # stack user's, made without sudo; the journal is private.
    uid, gid = host.user.uid, host.user.gid
    assert _mode(host.snapshots) == (uid, gid, 0o755)
    assert _mode(host.journal) == (uid, gid, 0o700)

    # The only root command: the link into the root-owned /usr/local/bin.
    assert host.log_lines('sudo:') == [
        'sudo: ln -sfn %s %s' % (host.manage, host.manage_link)]
    # Everything the plugin created is the stack user's, but that link.
    after = _owners(host.root)
    new_root_owned = sorted(str(p) for p, owner in after.items()
                            if owner == 0 and p not in before)
    assert new_root_owned == [str(host.manage_link)]
    assert all(after[p] == owner for p, owner in before.items())

    # nova-snapdriver-manage's own journal check passes for the stack user
    # (owner and mode), as does writing a record there and in the
    # snapshots directory, as nova-compute will.
    checked = json.loads(host.run_python(
        'import json, os, sys\n'
        'import nova.conf\n'
        'from nova_snapdriver.cmd import manage\n'
        'from nova_snapdriver import journal\n'
        'CONF = nova.conf.CONF\n'
        'CONF(["--config-file", sys.argv[1]], project="nova")\n'
        'd = journal.directory()\n'
        'journal.write_atomically(os.path.join(d, "probe.json"), "{}")\n'
        'os.mkdir(os.path.join(CONF.libvirt.snapshots_directory, "probe"))\n'
        'print(json.dumps(manage._check_state_dir()))\n',
        host.nova_cpu_conf))
    assert checked['result'] == 'OK', checked
    assert str(host.journal) in checked['detail']


def test_stack_puts_nova_snapdriver_manage_on_the_path(host):
    host.devstack('stack')
    assert os.readlink(host.manage_link) == str(host.manage)
    assert host.manage_link.lstat().st_uid == 0

    # The stack user runs it by name, under nova's python.
    result = host.run_as_stack(
        ['nova-snapdriver-manage', '--help'],
        PATH='%s:/usr/bin:/bin' % host.link_dir)
    assert result.returncode == 0, result.stderr
    assert 'usage: nova-snapdriver-manage' in result.stdout


def test_stack_installs_no_rootwrap_filters(host):
    host.devstack('stack')
    assert sorted(p.name for p in host.filters_dir.iterdir()) == [
        'compute.filters']
    # What nova-rootwrap would load: nova's filters and nothing of ours.
    names = {f.name for f in _rootwrap_filters(host)}
    assert 'privsep-rootwrap-sys_admin' in names
    assert not [n for n in names if n.startswith('snapdriver-')]
    assert not any(f.exec_path.endswith('qemu-img')
                   for f in _rootwrap_filters(host)
                   if hasattr(f, 'exec_path'))


def _plant_stale_filters(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STALE_FILTERS)
    os.chown(path, 0, 0)
    path.chmod(0o644)


def test_stack_removes_the_filters_an_earlier_plugin_installed(host):
    # Earlier versions installed snapdriver.filters (root:root 0644) into
    # the first filters_path directory, or SNAPDRIVER_ROOTWRAP_FILTERS_DIR.
    # rootwrap.conf here reads a second directory too, which holds one.
    other = host.root / 'usr' / 'share' / 'nova' / 'rootwrap'
    old_dir = host.root / 'srv' / 'filters'
    host._rootwrap(other)
    stale = [host.our_filters, other / 'snapdriver.filters',
             old_dir / 'snapdriver.filters']
    for path in stale:
        _plant_stale_filters(path)
    assert any(f.name.startswith('snapdriver-')
               for f in _rootwrap_filters(host))

    result = host.devstack('stack',
                           SNAPDRIVER_ROOTWRAP_FILTERS_DIR=str(old_dir))
    for path in stale:
        assert not path.exists(), path
        assert 'removed %s' % path in result.stdout
    assert 'sudo: rm -f %s' % host.our_filters in host.log_lines('sudo:')
    assert not any(f.name.startswith('snapdriver-')
                   for f in _rootwrap_filters(host))
    assert (host.filters_dir / 'compute.filters').exists()


def test_a_filters_file_the_plugin_did_not_write_is_left_with_a_warning(
        host):
    by_hand = STALE_FILTERS.replace(MARKER + '\n', '')
    host.our_filters.write_text(by_hand)
    host.devstack('stack')
    assert host.our_filters.read_text() == by_hand
    warnings = host.log_lines('warn: nova-snapdriver: %s' % host.our_filters)
    assert len(warnings) == 1
    assert "remove it with 'sudo rm %s'" % host.our_filters in warnings[0]


def test_clean_removes_the_filters_an_earlier_plugin_installed(host):
    _plant_stale_filters(host.our_filters)
    result = host.devstack('clean')
    assert not host.our_filters.exists()
    assert 'removed %s' % host.our_filters in result.stdout


def test_settings_from_local_conf_reach_nova(host):
    host.devstack(
        'stack',
        SNAPDRIVER_CAPTURE_METHOD='stream',
        SNAPDRIVER_BLOCK_JOB_TIMEOUT='600',
        SNAPDRIVER_BLOCK_JOB_BANDWIDTH='50',
        SNAPDRIVER_CONVERT_COROUTINES='4',
        SNAPDRIVER_STREAM_SCRATCH_MAX_MB='2048',
        SNAPDRIVER_TEMPEST_PAUSED_SNAPSHOT='no')

    conf = read_ini(host.nova_cpu_conf)
    assert dict(conf['snapdriver']) == {
        'capture_method': 'stream', 'block_job_timeout': '600',
        'block_job_bandwidth': '50', 'convert_coroutines': '4',
        'stream_scratch_max_mb': '2048'}
    tempest = read_ini(host.tempest_conf)
    assert dict(tempest['snapdriver_feature_enabled']) == {
        'live_snapshot': 'True', 'paused_snapshot': 'False',
        'stopped_snapshot': 'True'}


def test_directories_nova_conf_names_elsewhere_are_the_stack_users(host):
    # A snapshots directory and a journal under a root-owned /srv (made
    # with sudo, but for the stack user), with nova.conf's $-references.
    srv = host.root / 'srv'
    srv.mkdir()
    with open(host.nova_conf, 'a') as f:
        f.write('snapshots_directory = %s/snaps/$instances_path\n'
                '\n[snapdriver]\njournal_path = %s/journal\n' % (srv, srv))
    host.devstack('stack')

    snapshots = pathlib.Path('%s/snaps%s' % (srv, host.instances))
    uid, gid = host.user.uid, host.user.gid
    assert _mode(snapshots) == (uid, gid, 0o755)
    assert _mode(srv / 'journal') == (uid, gid, 0o700)
    assert _mode(srv / 'snaps') == (0, 0, 0o755)
    assert 'sudo: install -d -o %s -g %d -m 0700 %s/journal' % (
        host.user.name, gid, srv) in host.log_lines('sudo:')


def test_a_journal_nova_compute_cannot_own_stops_stack(host):
    # E.g. left by "sudo nova-snapdriver-manage" or a root nova-compute:
    # its 0600 records would be unreadable for n-cpu.  The plugin says
    # what to do rather than chown what it did not make.
    host.journal.mkdir(mode=0o700)
    result = host.devstack('stack', check=False)
    assert result.returncode != 0
    assert ('needs [snapdriver] journal_path %s to be a directory it owns'
            % host.journal) in result.stderr
    assert "sudo chown %s %s" % (host.user.name, host.journal) in (
        result.stderr)
    assert _mode(host.journal) == (0, 0, 0o700)


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
    assert os.readlink(host.manage_link) == str(host.manage)


def test_stack_twice_changes_nothing(host):
    host.devstack('stack')
    files = [host.nova_conf, host.nova_cpu_conf, host.reexport,
             host.tempest_conf]
    first = [f.read_text() for f in files]
    modes = [_mode(d) for d in (host.snapshots, host.journal)]
    host.devstack('stack')
    assert [f.read_text() for f in files] == first
    assert [_mode(d) for d in (host.snapshots, host.journal)] == modes
    assert os.readlink(host.manage_link) == str(host.manage)


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


def test_a_command_that_is_not_a_link_is_left_alone(host):
    host.manage_link.write_text('#!/bin/sh\n')
    result = host.devstack('stack')
    assert 'exists and is not a link; left alone' in result.stdout
    assert host.manage_link.read_text() == '#!/bin/sh\n'
    host.devstack('clean')
    assert host.manage_link.read_text() == '#!/bin/sh\n'


def test_no_link_dir_no_link(host):
    host.devstack('stack', SNAPDRIVER_BIN_LINK_DIR='')
    assert not host.manage_link.exists()
    assert host.log_lines('sudo:') == []


# --- unstack, clean ---------------------------------------------------------

def test_unstack_stops_nothing_and_clean_removes_what_stack_installed(host):
    host.devstack('stack')
    # nova-compute ran: Python cached the re-export's bytecode, the driver
    # wrote a journal record.
    cache = host.reexport.parent / '__pycache__'
    cache.mkdir()
    (cache / '__init__.cpython-311.pyc').write_bytes(b'\0')
    _chown_tree(cache, host.user.uid, host.user.gid)
    logs = (host.log, host.xtrace)
    before = sorted(p for p in host.root.rglob('*') if p not in logs)

    host.devstack('unstack')
    assert sorted(p for p in host.root.rglob('*') if p not in logs) == before

    host.devstack('clean')
    assert not host.reexport.parent.exists()
    assert not os.path.lexists(host.manage_link)
    assert host.reexport_origin() == ''
    # Everything else stays: nova's filters, nova's checkout, pip's copy
    # and script, nova's state (the journal and snapshots directories),
    # the configuration (devstack's clean removes those itself).
    assert (host.filters_dir / 'compute.filters').exists()
    assert (host.virt_dir / 'libvirt').exists()
    assert host.pip_copy.exists()
    assert host.manage.exists()
    assert host.journal.is_dir() and host.snapshots.is_dir()
    assert host.nova_conf.exists()

    # A second clean finds nothing to do.
    host.devstack('clean')


# --- which nodes ------------------------------------------------------------

def test_disable_service_in_local_conf_turns_the_plugin_off(host):
    host.localrc.write_text('disable_service snapdriver\n')
    _plant_stale_filters(host.our_filters)
    nova_conf = host.nova_conf.read_text()
    tempest_conf = host.tempest_conf.read_text()
    host.devstack('stack')
    assert host.nova_cpu_conf.read_text() == nova_conf
    assert host.tempest_conf.read_text() == tempest_conf
    assert not host.reexport.exists()
    assert not os.path.lexists(host.manage_link)
    assert not host.journal.exists()
    assert host.our_filters.exists()
    assert host.log_lines('pip_install:') == []
    assert host.log_lines('tempest pip:') == []
    assert host.log_lines('sudo:') == []


def test_a_node_without_n_cpu_only_configures_tempest(host):
    nova_conf = host.nova_conf.read_text()
    host.devstack('stack', ENABLED_SERVICES='key,n-api,n-cond,tempest')
    assert host.nova_conf.read_text() == nova_conf
    assert not host.reexport.exists()
    assert not os.path.lexists(host.manage_link)
    assert not host.journal.exists()
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
