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

"""neutron-rpc-server for the minicloud: the RPC half of neutron-server.

neutron's WSGI application (``neutron.wsgi.api``, run under gunicorn by
tools/minicloud/minicloud_wsgi.py) serves the API only.  The agents talk to the
RPC
server, which neutron ships as ``neutron-rpc-server``
(``neutron.cmd.server:main_rpc``).  It lists ports too, so it needs the
same mapper set-up as the API (see tools/minicloud/minicloud_wsgi.py): this
runs it
after that.  Arguments are neutron-rpc-server's (``--config-file ...``).
"""

# First: importing it selects neutron's threading backend.
from neutron.cmd import server  # noqa: I100

import importlib  # noqa: E402
import sys  # noqa: E402

from sqlalchemy import orm  # noqa: E402

importlib.import_module('neutron.db.migration.models.head')
orm.configure_mappers()
sys.exit(server.main_rpc())
