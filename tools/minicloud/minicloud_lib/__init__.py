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

"""The minicloud: a real one-machine OpenStack running our driver.

The code behind ``tools/minicloud/minicloud`` (the shell wrapper) and
tools/minicloud/minicloud.py (its entry point), whose nova-compute runs
snapdriver.SnapLibvirtDriver.

Everything listens on 127.0.0.1 and keeps its state under one directory
(``MINICLOUD_DIR``, default /var/tmp/nova-snapdriver-minicloud):

    mysql/  rabbitmq/  etc/<service>/  log/<service>.log  run/<service>.pid
    nova/   (state_path: instances, our journal)   glance/   (image files)
    images/ (the tiny guest's kernel, initramfs and disk)   clouds.yaml

The services, each a real one from PyPI or Debian, started in its own
process group so that ``down`` can stop it with everything it spawned:

    MariaDB, RabbitMQ                          Debian's packages
    ovsdb-server, ovs-vswitchd (userspace)     Debian's, started by hand
    keystone, Glance, placement, nova-api,     gunicorn, through
    nova-metadata, neutron (ML2/OVS)           minicloud_wsgi.py
    neutron's RPC server and its openvswitch,  as root; the RPC server
    dhcp and metadata agents                   through
                                               minicloud_neutron_rpc.py
    nova-conductor, nova-scheduler,            their console scripts
    nova-compute (compute_driver =
    snapdriver.SnapLibvirtDriver, TCG)
    the API forwarder into NETNS_EXT           minicloud_nsforward.py

The guests' network (one shared flat provider network, no router) lives
in namespaces the cloud makes: neutron's qdhcp- one, and NETNS_EXT, where
tempest runs; the root namespace gets no address or route in it, and
``down`` proves that it never had one.

nova-compute runs as the system user ``nova``, as on a distro's or
devstack's compute host: it reaches libvirtd through the ``libvirt`` group's
socket and root only through ``sudo nova-rootwrap /etc/nova/rootwrap.conf``
(privsep's helper included).  ``tools/minicloud/minicloud`` prepares the host
for that
with tools/host/setup-compute-host.  Its configuration is
/etc/nova/minicloud-compute.conf (root:nova 0640; rootwrap's privsep filters
accept only a config file under /etc), its state_path ``nova/`` and its
lock_path are nova's; everything else stays root's.  ``down`` removes that
file too.

``up`` ends with flavors, the tiny guest's images in Glance (a Debian
cloud kernel (aki), a busybox initramfs (ari) and a small qcow2 disk
booted through them) and the network.  Three disk images differ only by
their kernel command line: ``minicloud-idle`` boots and waits,
``minicloud-markers`` writes numbered markers to its disk (see
tests/testbed/guest.py), ``minicloud-ssh`` (tempest's) mounts the disk's
ext4 partition on /root.

Every client call made here has a timeout, and a failed step stops ``up``
with the tail of the service's log; ``down`` is always safe to run.

The modules, by concern:

    config      constants, paths, the configuration files
    processes   process groups, pid files, waiting, ports, logs
    domains     libvirt's domains: foreign ones, the cloud's own
    services    MariaDB, RabbitMQ, keystone, Glance, placement, neutron
                and its agents, nova: set-up and start; the openstack CLI
    neutron_conf  neutron's configuration files (ML2/OVS, the agents)
    ovs         Open vSwitch: daemons, bridges, the namespace NETNS_EXT
    guestnet    the guest network's bring-up and tear-down, in order
    network     the containment checks, the guard chain, leftovers
    images      the tiny guest's images and the flavors
    tempest     the tempest run and its skips
    cli         the commands and main

Importing the package puts the top of the checkout on ``sys.path``, for
tests.testbed (the tiny guest, libvirtd).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
sys.path.insert(0, REPO)
