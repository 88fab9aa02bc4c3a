"""The benchmark of the worker against the floor (issue 9): `python -m benchmarks.run --help`.

Modules:
    run        the command line: interleaved pairs of floor and worker runs, table, JSON
    scenario   one run of one scenario on one side, in a fresh database and vhost
    floor      the floor: a minimal aio-pika + asyncpg worker (its own process)
    env        fresh databases (`billing-worker migrate`) and RabbitMQ vhosts
    plan       the commands of a run and the seed data they act on
    load       the load generator: pre-filling, closed-loop RPC, collecting replies
    procs      consumer subprocesses and their CPU time from /proc
    check      the correctness check: a fast wrong run is a failed run
    stats      percentiles, rates, ratios, the table
"""
