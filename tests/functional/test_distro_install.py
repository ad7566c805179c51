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

"""nova from distribution packages, nova-snapdriver from pip.

Debian's and Ubuntu's ``python3-nova`` lives in
``/usr/lib/python3/dist-packages``; ``pip install`` puts nova-snapdriver,
its ``nova/virt/snapdriver`` re-export included, in
``/usr/local/lib/python3.X/dist-packages``, which comes first on
``sys.path``.  Here the two are two site directories made the same way:
``distro`` holds nova alone (this environment's nova, linked file by file,
without our re-export), ``pip`` what ``pip install --target`` made of this
checkout.  nova-compute's own ``load_compute_driver`` then fails, ``check``
says what to run, ``reexport`` (the documented fix, install.rst) makes
nova load the driver, and ``reexport --remove`` takes it away again.
"""

import os
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SITE = sysconfig.get_paths()['purelib']

# What nova-compute does with compute_driver (nova/virt/driver.py).
LOAD = '''
import sys
from nova import config
from nova.virt import driver, virtapi
config.parse_args(['nova-compute', '--config-file', sys.argv[1]],
                  configure_db=False)
loaded = driver.load_compute_driver(virtapi.VirtAPI())
print('LOADED', type(loaded).__module__, sys.modules['nova'].__file__,
      sys.modules['nova_snapdriver'].__file__)
'''


@pytest.fixture(scope='module')
def sites(tmp_path_factory):
    """(distro, pip): nova alone, and nova-snapdriver as pip installs it."""
    root = tmp_path_factory.mktemp('sites')
    distro, pip = str(root / 'distro'), str(root / 'pip')
    os.mkdir(distro)
    # nova's files, linked (no copy); its directories are our own.
    subprocess.run(['cp', '-rs', os.path.join(SITE, 'nova'), distro],
                   check=True)
    subprocess.run(['rm', '-rf', os.path.join(distro, 'nova', 'virt',
                                              'snapdriver')], check=True)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                    '--no-deps', '--no-build-isolation', '--target', pip,
                    REPO], check=True, capture_output=True)
    return distro, pip


def run(sites, *argv):
    distro, pip = sites
    # pip's directory first, as /usr/local's comes before the distro's.
    env = dict(os.environ, PYTHONPATH='%s:%s' % (pip, distro))
    return subprocess.run([sys.executable] + list(argv), env=env, cwd='/',
                          capture_output=True, text=True, timeout=300)


def manage(sites, nova_conf, *args):
    return run(sites, '-m', 'nova_snapdriver.cmd.manage', '--config-file',
               nova_conf, *args)


def line_of(output, check):
    found = [line for line in output.splitlines()
             if line.split(':')[0].split(None, 1)[-1] == check]
    assert len(found) == 1, output
    return found[0]


def test_distro_nova_loads_the_pip_installed_driver_after_reexport(
        sites, nova_conf):
    distro, pip = sites
    written = os.path.join(distro, 'nova', 'virt', 'snapdriver',
                           '__init__.py')

    # As installed: nova-compute would not start.
    before = run(sites, '-c', LOAD, nova_conf)
    assert before.returncode == 1, before.stdout + before.stderr
    assert 'Unable to load the virtualization driver' in before.stderr
    check = manage(sites, nova_conf, 'check')
    assert check.returncode == 1
    failed = line_of(check.stdout, 'driver import')
    assert failed.startswith('FAIL'), failed
    assert 'Run "nova-snapdriver-manage reexport" as root' in failed
    assert written in failed

    fixed = manage(sites, nova_conf, 'reexport')
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.strip() == 'Wrote %s' % written

    after = run(sites, '-c', LOAD, nova_conf)
    assert after.returncode == 0, after.stderr
    loaded, module, nova_file, ours = after.stdout.split()[-4:]
    assert loaded == 'LOADED' and module == 'nova_snapdriver.driver'
    assert nova_file.startswith(distro) and ours.startswith(pip)
    check = manage(sites, nova_conf, 'check')
    assert line_of(check.stdout, 'driver import').startswith('OK')
    assert line_of(check.stdout, 'compute_driver').startswith('OK')
    again = manage(sites, nova_conf, 'reexport')
    assert again.stdout.strip() == 'Wrote %s' % written

    removed = manage(sites, nova_conf, 'reexport', '--remove')
    assert removed.returncode == 0, removed.stderr
    assert not os.path.exists(os.path.dirname(written))
    assert run(sites, '-c', LOAD, nova_conf).returncode == 1


def test_in_one_environment_reexport_has_nothing_to_do(nova_conf):
    """A venv (Kolla, OpenStack-Ansible): pip's re-export is nova's."""
    result = subprocess.run(
        [sys.executable, '-m', 'nova_snapdriver.cmd.manage', 'reexport'],
        cwd='/', capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('Nothing to do: nova.virt.snapdriver '
                                    'gives nova_snapdriver.driver.'), \
        result.stdout
    refused = subprocess.run(
        [sys.executable, '-m', 'nova_snapdriver.cmd.manage', 'reexport',
         '--remove'], cwd='/', capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert 'not written by this command' in refused.stderr
    assert os.path.exists(os.path.join(SITE, 'nova', 'virt', 'snapdriver',
                                       '__init__.py'))
