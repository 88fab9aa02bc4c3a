"""The benchmark of the worker against two floors (issues 9, 18): `python -m benchmarks.run --help`.

Modules:
    run            the command line: interleaved floor, batched, worker runs; table, JSON
    scenario       one run of one scenario on one side, in a fresh database and vhost
    floor          the per-message floor: a minimal aio-pika + asyncpg worker (its own process)
    batched_floor  the batched floor: a batch per transaction, confirms together, one ack
    env            fresh databases (`billing-worker migrate`) and RabbitMQ vhosts
    plan           the commands of a run and the seed data they act on
    load           the load generator: pre-filling, closed-loop RPC, collecting replies
    procs          consumer subprocesses and their CPU time from /proc
    check          the correctness check: a fast wrong run is a failed run
    stats          percentiles, rates, the worker's ratios to both floors, the table
    targets        the targets of issue 18 from the summary: met, not met, not measured
"""
