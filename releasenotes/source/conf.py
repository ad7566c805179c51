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

# Sphinx configuration of nova-snapdriver's release notes
# (tox -e releasenotes), built by reno from releasenotes/notes.

extensions = [
    'openstackdocstheme',
    'reno.sphinxext',
]

project = 'nova-snapdriver Release Notes'
copyright = '2026, The nova-snapdriver authors'
master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'native'

openstackdocs_repo_name = 'openstack/nova-snapdriver'
openstackdocs_use_storyboard = False
openstackdocs_auto_name = False
openstackdocs_bug_project = 'nova-snapdriver'
openstackdocs_bug_tag = 'releasenotes'

html_theme = 'openstackdocs'
# Not an openstack.org-hosted project: no Google Analytics tag, no
# "OpenStack Docs" badge.
html_theme_options = {
    'analytics_tracking_code': '',
    'display_badge': False,
    'root_title': 'nova-snapdriver',
}
html_static_path = []
