"""gunicorn with --preload and meterkit: safe as it is.

meterkit re-initialises itself in each forked worker (its own buffer, flusher thread,
uid prefix and spool segments, via os.register_at_fork), so configuring it in the master
before the fork is fine. Each worker flushes at exit; `worker_exit` below makes that
explicit for workers gunicorn recycles.

With the agent running as another user (meterkit-agent.service), the application shares its
spool with the agent's group: METERKIT_SPOOL_DIR and METERKIT_SPOOL_SHARED_GROUP come from
app-meterkit.conf, a drop-in of the application's unit (or pass
``spool_shared_group="meterkit"`` to ``meterkit.configure``).
"""

import meterkit

bind = "127.0.0.1:8080"
workers = 4
preload_app = True


def on_starting(server: object) -> None:
    meterkit.configure(catalog="meters.yaml")


def worker_exit(server: object, worker: object) -> None:
    meterkit.shutdown(timeout=5)
