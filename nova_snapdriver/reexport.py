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

"""``nova.virt.snapdriver``: where nova finds the driver, and making it so.

nova loads a compute driver only as ``nova.virt.<compute_driver>``
(``nova.virt.driver.load_compute_driver``), so the package carries a
one-line re-export, ``nova/virt/snapdriver/__init__.py``.  pip puts it
next to nova when both are in one environment (a venv: Kolla's source
images, OpenStack-Ansible, devstack).  With nova from distribution
packages (Debian's and Ubuntu's ``python3-nova`` in
``/usr/lib/python3/dist-packages``) pip puts it elsewhere
(``/usr/local/lib/python3.X/dist-packages``), and Python takes
``nova.virt`` from nova's own directory only: nova-compute then fails to
start with an ImportError.

``install()`` writes the same re-export into nova's own ``nova/virt``
(``nova-snapdriver-manage reexport``), marked as ours; ``remove()`` takes
only a file so marked away again.  ``loads()`` imports the driver as
nova-compute will, and says what to do when it cannot.
"""

import importlib
import os

NAME = 'snapdriver'
DRIVER = 'snapdriver.SnapLibvirtDriver'
MARK = '# Written by "nova-snapdriver-manage reexport".'
CONTENT = MARK + '''
# nova loads compute drivers only as nova.virt.<name>, and this nova lives
# where pip does not put nova-snapdriver's own copy of this file.  Before
# uninstalling nova-snapdriver, run "nova-snapdriver-manage reexport
# --remove".
from nova_snapdriver.driver import SnapLibvirtDriver  # noqa: F401
'''


class ReexportError(Exception):
    """The re-export cannot be written or removed; the message says why."""


def nova_virt_dir():
    """The ``nova/virt`` directory nova-compute imports drivers from."""
    import nova.virt
    return os.path.dirname(os.path.abspath(nova.virt.__file__))


def path():
    """Where nova's own copy of the re-export goes."""
    return os.path.join(nova_virt_dir(), NAME, '__init__.py')


def ours(filename):
    """True if ``filename`` is a re-export this command wrote."""
    try:
        with open(filename) as f:
            return f.readline().rstrip('\n') == MARK
    except OSError:
        return False


def loads():
    """``(ok, detail)``: does ``nova.virt.snapdriver`` give our driver?

    Imported as ``load_compute_driver`` imports it (the class of
    ``nova.virt.snapdriver.SnapLibvirtDriver``), without starting it.
    """
    from nova_snapdriver import driver
    try:
        module = importlib.import_module('nova.virt.' + NAME)
        cls = getattr(module, 'SnapLibvirtDriver')
    except (ImportError, AttributeError) as e:
        return False, (
            'nova (%(nova)s) cannot import nova.virt.%(name)s: %(error)s.  '
            'nova loads compute drivers only from its own package '
            'directory, and nova-snapdriver (%(ours)s) put its re-export '
            'elsewhere, as pip does next to a distribution\'s nova.  Run '
            '"nova-snapdriver-manage reexport" as root (it writes %(path)s)'
            % {'nova': nova_virt_dir(), 'name': NAME, 'error': e,
               'ours': os.path.dirname(os.path.dirname(driver.__file__)),
               'path': path()})
    if cls is not driver.SnapLibvirtDriver:
        return False, ('nova.virt.%s.SnapLibvirtDriver is %s.%s, not this '
                       'nova-snapdriver\'s (%s): remove the stale %s'
                       % (NAME, cls.__module__, cls.__name__,
                          driver.__file__, module.__file__))
    return True, 'nova.virt.%s gives %s (from %s)' % (
        NAME, 'nova_snapdriver.driver.SnapLibvirtDriver', module.__file__)


def install():
    """Write the re-export into nova's ``nova/virt``; a message.

    Nothing is written when nova already imports our driver (a venv, where
    pip's copy is there), nor over a file this command did not write.
    """
    target = path()
    ok, detail = loads()
    if ok and not ours(target):
        return 'Nothing to do: %s' % detail
    if os.path.exists(target) and not ours(target):
        raise ReexportError('%s exists and was not written by this '
                            'command; not replaced (%s)' % (target, detail))
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    tmp = target + '.tmp'
    with open(tmp, 'w') as f:
        f.write(CONTENT)
    os.chmod(tmp, 0o644)
    os.rename(tmp, target)
    importlib.invalidate_caches()
    return 'Wrote %s' % target


def remove():
    """Remove the re-export this command wrote; a message."""
    target = path()
    if not os.path.exists(target):
        return 'Nothing to remove: %s does not exist' % target
    if not ours(target):
        raise ReexportError('%s was not written by this command (pip '
                            'installed it with nova-snapdriver, or someone '
                            'else did); not removed' % target)
    os.unlink(target)
    directory = os.path.dirname(target)
    cache = os.path.join(directory, '__pycache__')
    if os.path.isdir(cache):
        for name in os.listdir(cache):
            os.unlink(os.path.join(cache, name))
        os.rmdir(cache)
    try:
        os.rmdir(directory)
    except OSError:
        pass  # something else is in it: left alone
    return 'Removed %s' % target
