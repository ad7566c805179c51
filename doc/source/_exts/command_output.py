"""``.. command-output::``: a command's output, run at build time.

    .. command-output:: nova_snapdriver.cmd.manage --help

The argument is a Python module and its arguments: the directive runs
``python -m <module> <args>`` with the interpreter that runs Sphinx (so
with the packages of the docs env), COLUMNS=79, and puts its standard
output in a literal block.  A command that fails fails the build.
No network, no extra package: this is what sphinxcontrib-programoutput
would do, kept to what these docs need.
"""

import os
import shlex
import subprocess
import sys

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


class CommandOutput(SphinxDirective):
    required_arguments = 1
    final_argument_whitespace = True
    has_content = False

    def run(self):
        args = shlex.split(self.arguments[0])
        env = dict(os.environ, COLUMNS='79', PYTHONWARNINGS='ignore')
        cmd = [sys.executable, '-m'] + args
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=120, cwd=self.env.srcdir)
        if proc.returncode != 0:
            raise self.error('%s exited with %d: %s' % (
                ' '.join(cmd), proc.returncode, proc.stderr.strip()))
        text = proc.stdout.rstrip()
        block = nodes.literal_block(text, text)
        block['language'] = 'text'
        return [block]


def setup(app):
    app.add_directive('command-output', CommandOutput)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
