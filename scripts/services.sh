#!/usr/bin/env bash
# Make sure the local PostgreSQL and RabbitMQ the worker and the tests use are up.
# Starts them when they are installed on this machine but stopped; does nothing when
# they already answer (or when they live elsewhere, e.g. in containers).
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 1; done
  echo "services: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    wait_port 5432 PostgreSQL
  else
    echo "services: PostgreSQL is not reachable on 127.0.0.1:5432 and not installed here" >&2
  fi
fi

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached
    rabbitmqctl await_startup --timeout 120 >/dev/null
    wait_port 5672 RabbitMQ
  else
    echo "services: RabbitMQ is not reachable on 127.0.0.1:5672 and not installed here" >&2
  fi
fi

# The tests administer their vhosts and users through RabbitMQ's management API: a call
# takes milliseconds, where each `rabbitmqctl` call boots an Erlang VM (about a second
# of CPU). Without the API they fall back to `rabbitmqctl`, only slower.
if port_open 5672 && ! port_open 15672 && command -v rabbitmq-plugins >/dev/null; then
  echo "services: enabling RabbitMQ's management plugin (port 15672)"
  if rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null; then
    wait_port 15672 "RabbitMQ's management API"
  else
    echo "services: could not enable it; the tests use rabbitmqctl instead" >&2
  fi
fi
