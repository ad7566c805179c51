# Sphinx configuration of nova-snapdriver's documentation (tox -e docs).

import os
import sys

sys.path.insert(0, os.path.abspath('_exts'))

extensions = [
    'openstackdocstheme',
    # .. show-options:: nova_snapdriver, from the oslo.config.opts entry
    # point in setup.cfg (nova_snapdriver.conf:list_opts).
    'oslo_config.sphinxext',
    # .. command-output::, for nova-snapdriver-manage --help.
    'command_output',
]

project = 'nova-snapdriver'
copyright = '2026, The nova-snapdriver authors'
master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'native'

# openstackdocstheme
openstackdocs_repo_name = 'openstack/nova-snapdriver'
openstackdocs_use_storyboard = False
openstackdocs_auto_name = False
openstackdocs_bug_project = 'nova-snapdriver'
openstackdocs_bug_tag = 'doc'

html_theme = 'openstackdocs'
# Not an openstack.org-hosted project: no Google Analytics tag, no
# "OpenStack Docs" badge.
html_theme_options = {
    'analytics_tracking_code': '',
    'display_badge': False,
    'root_title': 'nova-snapdriver',
}
html_static_path = []
html_last_updated_fmt = '%Y-%m-%d'
