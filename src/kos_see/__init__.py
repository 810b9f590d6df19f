"""kOS Service Execution Engine.

The engine accepts requests to run registered services, queues them, runs
each attempt isolated in its own process and working directory, streams its
events and stores what came out. The lifecycle modules follow DESIGN.md:
``dispatcher`` (intake), ``registry`` (services), ``queue`` (ordering and
retries), ``worker`` and ``runners`` (execution), ``events`` (streaming) and
``store`` (the source of truth).
"""

__version__ = "0.1.0"
