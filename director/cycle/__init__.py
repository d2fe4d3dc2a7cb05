"""The director's cycles, one job per module; `director.loop.Director` puts them together and
is the one entry of `run`, `once` and the dry run (`run_cycle()`, `monitor_cycle()`).

    context       what every part shares: settings, server client, clock, metrics, back-off,
                  queues, the stop flag
    queues        config -> CE instances, queue specs, server queue ids, prepared wrappers
    leases        per-queue leases: which queues this director may work now
    submission    the submission cycle and its phases 0, 1 and 3 (select, plan, submit; the
                  dry run's files)
    reconcile     CE jobs against live pilots without a reference, by stamp (in phase 1)
    registration  phases 2 and 4, in bulk: register + mint before submitting, record after
    report        the queue report to the server after a submission cycle
    throttles     each queue's submission factor from its empty pilots (in phase 0 and 1)
    monitoring    the monitoring cycle: CE statuses to the server, stuck pilots Aborted,
                  leftovers cleaned
    outcomes      what one queue's cycle did, and its one log line

No module here imports `director.loop`.
"""
