"""gunicorn with --preload and meterkit: safe as it is.

meterkit re-initialises itself in each forked worker (its own buffer, flusher thread,
uid prefix and spool segments, via os.register_at_fork), so configuring it in the master
before the fork is fine. Each worker flushes at exit; `worker_exit` below makes that
explicit for workers gunicorn recycles.
"""

import meterkit

bind = "127.0.0.1:8080"
workers = 4
preload_app = True


def on_starting(server: object) -> None:
    meterkit.configure(catalog="meters.yaml")


def worker_exit(server: object, worker: object) -> None:
    meterkit.shutdown(timeout=5)
