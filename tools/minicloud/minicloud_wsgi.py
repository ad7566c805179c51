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

"""gunicorn entry point for the minicloud's WSGI services.

``MINICLOUD_APP`` names the service (keystone, glance, placement, nova,
nova-metadata or neutron).  Each of them parses ``sys.argv`` with
oslo.config when it is imported, and under gunicorn ``sys.argv`` holds
gunicorn's own options, which the service rejects (the worker then dies
and gunicorn restarts it forever).  So the command line is emptied
first.  The configuration comes from the directory in the service's
``OS_<SERVICE>_CONFIG_DIR`` variable, which
tools/minicloud/minicloud_lib/services.py
sets.

``concurrent.futures.thread`` is imported up front because Glance's atexit
hook otherwise imports it during interpreter shutdown and logs a traceback
on every stop.
"""

import concurrent.futures.thread  # noqa: F401
import importlib
import os
import sys

sys.argv = sys.argv[:1]

MODULES = {
    'keystone': 'keystone.wsgi.api',
    'glance': 'glance.wsgi.api',
    'placement': 'placement.wsgi.api',
    'nova': 'nova.wsgi.osapi_compute',
    'nova-metadata': 'nova.wsgi.metadata',
    'neutron': 'neutron.wsgi.api',
}

if os.environ['MINICLOUD_APP'] == 'neutron':
    # neutron's get_ports joins Port.port_forwardings, a relationship that
    # only exists once the port-forwarding model is imported, which the
    # router service plugin would do.  With no service plugins (ML2/OVS
    # and no L3) nothing imports it, and GET /v2.0/ports fails with an
    # AttributeError.  The models' "head" module imports every model, and
    # configure_mappers() creates the backrefs before the first request.
    importlib.import_module('neutron.db.migration.models.head')
    from sqlalchemy import orm
    orm.configure_mappers()

application = importlib.import_module(
    MODULES[os.environ['MINICLOUD_APP']]).application
