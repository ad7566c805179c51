"""Run one snapshot in a child process, to be killed at a chosen step.

    python -m tests.testbed.child NOVA_CONF INSTANCE_JSON IMAGE_ID STOP_AT

The child configures nova from NOVA_CONF exactly as the tests' own process
did, loads the driver by name (init_host included) and snapshots the
instance described by INSTANCE_JSON.  When the snapshot reaches STOP_AT, a
journal step ('overlay', 'undefined', 'copying', 'extracting',
'uploading') or 'upload-data' (the first bytes sent to Glance), it prints
"REACHED <STOP_AT>" and waits, so the parent can kill -9 it right there.
"""

import json
import sys
import time

from tests.testbed import nova_env  # noqa: I100  (imports nova.tests first)

from nova_snapdriver import progress  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402


def main(conf_path, instance_json, image_id, stop_at):
    nova_env.configure_from(conf_path)
    driver = nova_env.load_driver()
    inst = test_instance.InstanceRef(**json.loads(instance_json))
    obj = test_instance.make_instance_object(inst)

    def stop_here(uuid, phase, done, total):
        if phase == 'step:' + stop_at or (
                stop_at == 'upload-data' and phase == 'upload' and done):
            print('REACHED %s' % stop_at, flush=True)
            time.sleep(3600)

    progress.listen(stop_here)
    driver.snapshot(nova_env.admin_context(), obj, image_id,
                    lambda **kw: None)
    print('FINISHED', flush=True)


if __name__ == '__main__':
    main(*sys.argv[1:5])
