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

"""A compute host of the shape operators run, for the non-root tests.

nova-compute runs as the system user ``nova``: it reaches libvirtd through
the group-owned socket and becomes root only through ``sudo nova-rootwrap
/etc/nova/rootwrap.conf`` (privsep included), with nova's own rootwrap.conf
and compute.filters installed as shipped.  ``tools/host/setup-compute-host``
makes the machine so; ``tools/host/compute-venv`` builds the venv nova runs
from, out of Debian's python3 (the tests' own python lives under /root,
where nova cannot read).

The host's layout is deliberately not nova's default: its own
instances_path, an image cache named by ``[image_cache]
subdirectory_name``, and a snapshots directory outside instances_path.
Everything belongs to nova; the test process (root) only creates instances
in it the way nova would, with nova as the files' owner.

``ComputeHost.snapshot`` runs one snapshot in a child process as nova
(``tests/testbed/compute_child.py``) and returns what it printed.
"""

import json
import os
import pwd
import shutil
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
USER = 'nova'
ROOTWRAP_CONF = '/etc/nova/rootwrap.conf'
CACHE_NAME = '_cache'
CHILD_TIMEOUT = 600


class SnapshotResult(object):
    def __init__(self, proc):
        self.returncode = proc.returncode
        self.output = proc.stdout
        lines = [line for line in proc.stdout.splitlines()
                 if line.startswith('RESULT ')]
        self.result = json.loads(lines[-1][7:]) if lines else None

    @property
    def ok(self):
        return bool(self.result and self.result['ok'])

    @property
    def error(self):
        return (self.result or {}).get('error', '')

    @property
    def methods(self):
        """The capture method of each journal record begun (None: cold)."""
        return (self.result or {}).get('methods')

    def __repr__(self):
        return 'SnapshotResult(rc=%s, %s)\n%s' % (
            self.returncode, self.result, self.output[-4000:])


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)
    if proc.returncode:
        raise RuntimeError('%s failed (exit %d):\n%s'
                           % (' '.join(cmd), proc.returncode, proc.stdout))
    return proc.stdout


def prepare():
    """Build nova's venv and set this machine up; return the venv's path."""
    out = _run([os.path.join(REPO, 'tools', 'host', 'compute-venv')], cwd=REPO)
    venv = out.strip().splitlines()[-1]
    _run([os.path.join(REPO, 'tools', 'host', 'setup-compute-host'), venv])
    return venv


class ComputeHost(object):
    """The nova user's compute host: set up, used, and removed again."""

    def __init__(self, glance_url):
        self.glance_url = glance_url
        self.venv = None
        self.root = None
        self.conf = None
        self.uid = self.gid = None

    # -- set-up --------------------------------------------------------
    def setup(self):
        """Lay out the host's directories and nova.conf; needs prepare()."""
        self.venv = self.venv or prepare()
        pw = pwd.getpwnam(USER)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.root = tempfile.mkdtemp(prefix='snapdriver-nonroot-',
                                     dir=pw.pw_dir)
        os.chmod(self.root, 0o755)
        for sub in ('instances', 'instances/' + CACHE_NAME, 'snapshots',
                    'state', 'locks', 'src'):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        # The test bed's code, where nova can read it.
        src = os.path.join(self.root, 'src', 'tests')
        shutil.copytree(os.path.join(REPO, 'tests', 'testbed'),
                        os.path.join(src, 'testbed'),
                        ignore=shutil.ignore_patterns('__pycache__'))
        shutil.copy(os.path.join(REPO, 'tests', '__init__.py'), src)
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                os.chown(os.path.join(top, name), self.uid, self.gid)
        os.chown(self.root, self.uid, self.gid)
        # nova's compute.filters run privsep-helper only with a config
        # file under /etc, as on a real host.
        self.conf = '/etc/nova/%s.conf' % os.path.basename(self.root)
        self.write_conf(self.conf, self.sections())
        return self

    @property
    def instances_path(self):
        return os.path.join(self.root, 'instances')

    @property
    def snapshots_directory(self):
        return os.path.join(self.root, 'snapshots')

    def sections(self):
        privsep = ('sudo nova-rootwrap %s privsep-helper --config-file %s'
                   % (ROOTWRAP_CONF, self.conf))
        return {
            'DEFAULT': {
                # What nova-compute loads; a child names its driver itself.
                'compute_driver': 'snapdriver.SnapLibvirtDriver',
                'state_path': os.path.join(self.root, 'state'),
                'instances_path': self.instances_path,
                'rootwrap_config': ROOTWRAP_CONF,
                'debug': 'true',
                'use_stderr': 'true',
                'transport_url': 'fake:/',
            },
            'oslo_messaging_notifications': {'driver': 'noop'},
            'image_cache': {'subdirectory_name': CACHE_NAME},
            'libvirt': {
                'virt_type': 'qemu',
                'images_type': 'qcow2',
                'snapshots_directory': self.snapshots_directory,
            },
            'glance': {'endpoint_override': self.glance_url,
                       'num_retries': '0'},
            'nova_sys_admin': {'helper_command': privsep},
            'snapdriver': {'block_job_poll_interval': '0.1',
                           'reserved_space_mb': '0'},
            'oslo_concurrency': {
                'lock_path': os.path.join(self.root, 'locks')},
            'service_user': {'auth_type': 'none'},
        }

    @staticmethod
    def write_conf(path, sections):
        with open(path + '.tmp', 'w') as f:
            for section, values in sections.items():
                f.write('[%s]\n' % section)
                for key, value in values.items():
                    f.write('%s = %s\n' % (key, value))
                f.write('\n')
        os.chmod(path + '.tmp', 0o644)
        os.rename(path + '.tmp', path)

    def cleanup(self):
        if self.conf and os.path.exists(self.conf):
            os.unlink(self.conf)
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- use -----------------------------------------------------------
    def instance_kwargs(self):
        """NovaInstance arguments for an instance of this host."""
        return {'instances_path': self.instances_path,
                'cache_name': CACHE_NAME, 'owner': (self.uid, self.gid)}

    def snapshot(self, inst, image_id, driver='snapdriver.SnapLibvirtDriver',
                 **options):
        """Snapshot ``inst`` as nova; options: {'group': {opt: value}}."""
        confs = [self.conf]
        if options:
            extra = os.path.join(self.root, 'extra-%s.conf' % image_id)
            self.write_conf(extra, options)
            confs.append(extra)
        cmd = ['runuser', '-u', USER, '--',
               os.path.join(self.venv, 'bin', 'python'), '-m',
               'tests.testbed.compute_child', driver, inst.ref_json(),
               image_id] + confs
        env = {'PATH': '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
               'PYTHONPATH': os.path.join(self.root, 'src'),
               'HOME': pwd.getpwnam(USER).pw_dir, 'LC_ALL': 'C.UTF-8'}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env,
                              cwd=self.root, timeout=CHILD_TIMEOUT)
        return SnapshotResult(proc)

    def as_nova(self, *cmd):
        """Run a command as nova; its CompletedProcess."""
        return subprocess.run(['runuser', '-u', USER, '--'] + list(cmd),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              cwd=self.root, timeout=CHILD_TIMEOUT)

    def not_nova_owned(self, directory):
        """Files under ``directory`` that nova does not own."""
        found = []
        for top, dirs, files in os.walk(directory):
            for name in dirs + files:
                path = os.path.join(top, name)
                if os.lstat(path).st_uid != self.uid:
                    found.append(path)
        return found
