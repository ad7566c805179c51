"""The minicloud: a real one-machine OpenStack running our driver.

The code behind ``tools/minicloud`` (the shell wrapper) and
tools/minicloud.py (its entry point), whose nova-compute runs
snapdriver.SnapLibvirtDriver.

Everything listens on 127.0.0.1 and keeps its state under one directory
(``MINICLOUD_DIR``, default /var/tmp/nova-snapdriver-minicloud):

    mysql/  rabbitmq/  etc/<service>/  log/<service>.log  run/<service>.pid
    nova/   (state_path: instances, our journal)   glance/   (image files)
    images/ (the tiny guest's kernel, initramfs and disk)   clouds.yaml

The services, each a real one from PyPI or Debian, started in its own
process group so that ``down`` can stop it with everything it spawned:

    MariaDB, RabbitMQ                          Debian's packages
    keystone, Glance, placement, nova-api,     gunicorn, through
    neutron (ML2, no agents, no plugins)       tools/minicloud_wsgi.py
    nova-conductor, nova-scheduler,            their console scripts
    nova-compute (compute_driver =
    snapdriver.SnapLibvirtDriver, TCG)

nova-compute runs as the system user ``nova``, as on a distro's or
devstack's compute host: it reaches libvirtd through the ``libvirt`` group's
socket and root only through ``sudo nova-rootwrap /etc/nova/rootwrap.conf``
(privsep's helper included).  ``tools/minicloud`` prepares the host for that
with tools/setup-compute-host.  Its configuration is
/etc/nova/minicloud-compute.conf (root:nova 0640; rootwrap's privsep filters
accept only a config file under /etc), its state_path ``nova/`` and its
lock_path are nova's; everything else stays root's.  ``down`` removes that
file too.

``up`` ends with flavors and the tiny guest's images in Glance: a Debian
cloud kernel (aki), a busybox initramfs (ari) and a small qcow2 disk
booted through them.  Two disk images differ only by their kernel command
line: ``minicloud-idle`` boots and waits, ``minicloud-markers`` writes
numbered markers to its disk (see tests/testbed/guest.py).

Every client call made here has a timeout, and a failed step stops ``up``
with the tail of the service's log; ``down`` is always safe to run.

The modules, by concern:

    config      constants, paths, the configuration files
    processes   process groups, pid files, waiting, ports, logs
    domains     libvirt's domains: foreign ones, the cloud's own
    services    MariaDB, RabbitMQ, keystone, Glance, placement, neutron,
                nova: set-up and start; the openstack CLI
    images      the tiny guest's images and the flavors
    tempest     the tempest run and its skips
    cli         the commands and main

Importing the package puts the top of the checkout on ``sys.path``, for
tests.testbed (the tiny guest, libvirtd).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)
