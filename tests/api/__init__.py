# nova's functional framework must be imported before any other nova
# module: nova.tests.functional applies nova's concurrency setup (eventlet
# monkey patching unless OS_NOVA_DISABLE_EVENTLET_PATCHING says otherwise),
# and this package is imported before the test modules in it.
import nova.tests.functional  # noqa: F401
