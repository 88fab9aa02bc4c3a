"""A throwaway 3-node RabbitMQ cluster on this machine, from the installed RabbitMQ.

Each node has its own name, AMQP and distribution ports (loopback only), data, log,
config and plugins files under the test's tmp dir; the nodes and every `rabbitmqctl`
call aimed at them share one Erlang cookie through a HOME of their own (a copy of the
machine's node cookie when readable, else a fresh one). The machine's own RabbitMQ
node is never touched. `close()` stops every node and kills what is left of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

MACHINE_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")
LOOPBACK_DIST = 'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"'


def rabbitmq_bin() -> Path | None:
    """The directory of the real rabbitmq-server / rabbitmqctl scripts (not the Debian
    wrappers in /usr/sbin, which switch to the rabbitmq user)."""
    for candidate in (os.environ.get("BILLING_TEST_RABBITMQ_BIN"), "/usr/lib/rabbitmq/bin"):
        if candidate and (Path(candidate) / "rabbitmq-server").is_file():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    real = Path(found).resolve().parent
    return real if (real / "rabbitmqctl").is_file() else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@dataclass
class Node:
    name: str  # e.g. billing-c1-ab12cd@localhost
    port: int  # AMQP
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def short(self) -> str:
        return self.name.split("@", 1)[0]


@dataclass
class Cluster:
    root: Path
    size: int = 3
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        found = rabbitmq_bin()
        assert found is not None, "rabbitmq-server is not installed"
        self.bin = found
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        try:
            value = MACHINE_COOKIE.read_text().strip()
        except OSError:
            value = secrets.token_hex(20).upper()
        cookie.write_text(value)
        cookie.chmod(0o400)
        self.env_file = self.root / "rabbitmq-env.conf"
        self.env_file.write_text(f"ERL_EPMD_ADDRESS=127.0.0.1\n{LOOPBACK_DIST}\n")

    # ------------------------------------------------------------------ commands

    def _env(self, **extra: str) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **clean,
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(self.env_file),
            **extra,
        }

    def ctl(self, node: Node, *args: str, timeout: float = 90) -> str:
        done = subprocess.run(  # noqa: S603 - the installed rabbitmqctl, our own nodes
            [str(self.bin / "rabbitmqctl"), "-q", "-n", node.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} on {node.name}: {done}"
        return done.stdout

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        for number in range(1, self.size + 1):
            base = self.root / f"n{number}"
            base.mkdir()
            node = Node(f"billing-c{number}-{self.run}@localhost", free_port(), free_port(), base)
            (base / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.port}\n"
                "log.console = false\n"
                "log.file.level = info\n"
            )
            (base / "enabled_plugins").write_text("[].\n")
            self.nodes.append(node)
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        status = json.loads(self.ctl(first, "cluster_status", "--formatter", "json"))
        running = set(status["running_nodes"])
        assert running == {n.name for n in self.nodes}, status

    def _launch(self, node: Node) -> None:
        base = node.base
        env = self._env(
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),  # none
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
        )
        with (base / "server.out").open("ab") as output:
            node.process = subprocess.Popen(  # noqa: S603 - the installed rabbitmq-server
                [str(self.bin / "rabbitmq-server")],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=base,
                start_new_session=True,  # its own process group: killed as one in close()
            )

    def _await(self, node: Node, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(node.port):
            assert node.process is not None
            assert node.process.poll() is None, (
                f"{node.name} exited:\n{(node.base / 'server.out').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"{node.name} never opened its AMQP port"
            time.sleep(0.25)
        self.ctl(node, "await_startup")

    def stop_app(self, node: Node) -> None:
        """The RabbitMQ application stopped: its connections closed, its port closed;
        the Erlang node stays up (a cluster member that is down)."""
        self.ctl(node, "stop_app")

    def start_app(self, node: Node) -> None:
        self.ctl(node, "start_app")
        self.ctl(node, "await_startup")

    def close(self) -> list[str]:
        """Stop every node, whatever state it is in; returns what had to be killed."""
        killed = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(Exception):
                subprocess.run(  # noqa: S603 - our own node
                    [str(self.bin / "rabbitmqctl"), "-q", "-n", node.name, "stop"],
                    env=self._env(),
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                killed.append(node.name)
        for node in self.nodes:  # the whole process group: beam, erl_child_setup, ...
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    node.process.wait(10)
        return killed

    def leftovers(self) -> list[str]:
        """Processes of this cluster still running (`ps`), by its unique node names."""
        listing = subprocess.run(
            ["ps", "-eo", "pid,args"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line for line in listing.splitlines() if f"-{self.run}@localhost" in line]

    # ------------------------------------------------------------------ broker views

    def add_vhost(self, name: str, user: str = "guest") -> None:
        self.ctl(self.nodes[0], "add_vhost", name)
        self.ctl(self.nodes[0], "set_permissions", "-p", name, user, ".*", ".*", ".*")

    def urls(self, vhost: str, user: str = "guest", password: str = "guest") -> list[str]:  # noqa: S107 - RabbitMQ's default
        path = quote(vhost, safe="")
        return [f"amqp://{user}:{password}@127.0.0.1:{n.port}/{path}" for n in self.nodes]

    def queues(self, vhost: str, via: Node) -> list[dict[str, object]]:
        listing = self.ctl(
            via, "list_queues", "-p", vhost, "name", "type", "leader", "members",
            "online", "messages", "arguments", "--formatter", "json",
        )  # fmt: skip
        return list(json.loads(listing))

    def leaders(self, vhost: str, via: Node) -> dict[str, str]:
        """Quorum queue -> the node leading it."""
        return {
            str(q["name"]): str(q["leader"]) for q in self.queues(vhost, via) if q.get("leader")
        }

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)
