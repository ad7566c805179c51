"""The minicloud script itself, while the cloud is up."""

import os
import subprocess

from tests.e2e.conftest import CALL_TIMEOUT
from tests.e2e.conftest import REPO


def minicloud(*args):
    return subprocess.run([os.path.join(REPO, 'tools', 'minicloud')]
                          + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          timeout=CALL_TIMEOUT)


def test_a_second_up_is_refused_and_changes_nothing():
    before = minicloud('status')
    assert before.returncode == 0, before.stdout + before.stderr

    again = minicloud('up')

    assert again.returncode == 1
    assert 'the minicloud is already up' in again.stderr
    assert 'tools/minicloud down' in again.stderr
    after = minicloud('status')
    assert after.returncode == 0
    # Same services with the same pids: nothing was restarted.
    assert after.stdout == before.stdout
