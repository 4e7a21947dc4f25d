"""The parts of a run, each with one job, composed by engine/coordinator.py:

- context.py    what the parts share: the config, the run's paths, its servers, its clock
- incidents.py  what went wrong during the run: kept, said, and recorded in the store
- signals.py    SIGINT/SIGTERM: a graceful stop, then a stop at once
- targets.py    the servers of the run (launched, attached, a fleet) and the worker backend
- watch.py      the watch processes: the aggregator and a monitor per server, their restarts
- pool.py       the worker processes: spawn, supervise, replace, kill the silent, halt, stop,
                and the shared memory each left behind
- recovery.py   a server that died or stopped answering: brought back, its load restarted
"""
