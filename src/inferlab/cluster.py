"""Sweeps and plans on a Ray cluster (`--cluster`): the same cells as on one machine, each
measured on one node by cells.measure_cell, with the same protocol, and saved on the driver as
it arrives. A host is a measuring instrument: never two cells at once on one host, even where
several Ray nodes share it (a simulated cluster's all do). Ray is imported here only, and
only when --cluster is given.

Each node answers with its machine record; nodes whose records agree in what decides speed
(CPU, its flags, cores, memory, software, and the name a node's `inferlab-machine` label gives)
are one kind. Every cell is measured once on every kind present (`--nodes` keeps only nodes
with a label or resource): where there are several, each cell carries its kind (Cell.machine),
so that no statistic, comparison or verdict mixes machines."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import machine
from .results import Cell, CellResult

LOCAL_PREFIX = "local:"
# a node label naming the node's machine: nodes of equal records but other names (the same CPU
# with SMT off, another instance type) are other kinds, and the reports call the kind by it
MACHINE_LABEL = "inferlab-machine"
CONNECT_TIMEOUT_S = 5.0  # a TCP reach of the address before Ray's own (minute-long) retries
RAYLET_CHECK_S = 0.2  # how often a measuring actor checks that its raylet is alive
NODE_LOG_BYTES = 1 << 20  # of each worker log a node sends back: its end, where errors are


class ClusterError(ValueError):
    """The cluster cannot be used as asked (one line: why); the CLI exits 2, as for any bad option."""


@dataclass(frozen=True)
class ClusterAddress:
    text: str
    local_nodes: int = 0  # local:N: a simulated cluster of N nodes on this machine


def parse_address(text: str) -> ClusterAddress:
    """`auto`, `local:N`, `ray://host:port` or a GCS `host:port`; ValueError for anything else."""
    text = text.strip()
    if text.startswith(LOCAL_PREFIX):
        n = text[len(LOCAL_PREFIX):]
        if not n.isdigit() or not 1 <= int(n) <= 16:
            raise ValueError(f"--cluster {text}: local:N takes N from 1 to 16 simulated nodes")
        return ClusterAddress(text, int(n))
    if text == "auto":
        return ClusterAddress(text)
    rest = text[len("ray://"):] if text.startswith("ray://") else text
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--cluster {text}: give auto, local:N, ray://HOST:PORT or HOST:PORT")
    return ClusterAddress(text)


def parse_node_filter(text: str | None) -> list[tuple[str, str | None]]:
    """--nodes: comma-separated terms, each `key=value` (a node label) or `name` (a custom
    resource or a label key the node has); a node must match every term."""
    if not text:
        return []
    terms = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        key, eq, value = term.partition("=")
        if not key or (eq and not value):
            raise ValueError(f"--nodes {text}: each term is LABEL=VALUE or a resource name")
        terms.append((key, value if eq else None))
    if not terms:
        raise ValueError(f"--nodes {text}: no terms")
    return terms


def matches(node: dict, terms: list[tuple[str, str | None]]) -> bool:
    labels, resources = node.get("Labels") or {}, node.get("Resources") or {}
    return all(labels.get(k) == v if v is not None else (resources.get(k, 0) > 0 or k in labels)
               for k, v in terms)


def machine_kind(record: dict) -> str:
    """A short id of what decides a machine's speed in its record: CPU, flags, cores, memory
    (GiB), Python, libraries, inferlab's build, the name its label gives; equal ids: figures
    that may share a statistic."""
    keys = ("cpu", "cpu_flags", "usable_cpus", "python", "libraries", "inferlab_commit", "name")
    what = {k: record.get(k) for k in keys}
    what["memory_gib"] = round((record.get("memory_bytes") or 0) / 2**30)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]


def describe_here() -> dict:
    """This machine's record and kind: what a local sweep's cells carry."""
    record = machine.describe()
    return {"kind": machine_kind(record), "machine": record}


def local_node(described: dict) -> dict:
    """A cell's node when measured here (the shape a cluster's cells have)."""
    name = socket.gethostname()
    return {"id": "local", "host": name, "hostname": name, "kind": described["kind"]}


class NodeMeasurer:
    """On one node, as a Ray actor: the node's machine record, the model resolved there, its
    own worker pool (cells.WorkerPool) kept across cells; measures the cells it is sent one
    after another, by the same protocol as a local sweep."""

    def __init__(self, model: str, content_hash: str, thread_env: dict[str, str]):
        # Ray sets OMP_NUM_THREADS and the like in its workers; the engines set their threads
        # themselves and the record must say what the user set: the driver's own values
        for var in machine.THREAD_VARS:
            os.environ.pop(var, None)
        os.environ.update(thread_env)
        self.machine = machine.describe()  # its kind is the driver's to say (labels)
        self.logdir = tempfile.mkdtemp(prefix="inferlab-node-logs-")
        threading.Thread(target=_exit_with_raylet, args=(os.getppid(),), daemon=True).start()
        self.model, self.error, self.pool = None, None, None
        try:
            from .models import resolve

            ref = resolve(model)
            if ref.content_hash != content_hash:
                self.error = (f"its copy of {model} differs from the driver's (content "
                              f"{ref.content_hash} against {content_hash})")
            self.model = ref
        except Exception as e:  # a node without the model fails its cells with the reason
            self.error = f"cannot load {model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"

    def describe(self) -> dict:
        import ray

        return {"machine": self.machine, "ray": ray.__version__, "error": self.error, "pid": os.getpid()}

    def prepare(self, methods: list[str], timeout_s: float) -> dict[str, str | None]:
        """Each method's one-time conversion on this node (its own cache); the error per method."""
        from .results import MethodResult
        from .sweep import prepare_method

        out = {}
        for method in methods:
            r = MethodResult(method=method, status="running")
            prepare_method(r, self.model, self.logdir, timeout_s)
            out[method] = None if r.status == "running" else r.error
        return out

    def measure(self, cell: Cell, spec):
        """The cell's result, and what this node's loads said (cells.LoadInfo)."""
        from .cells import LoadInfo, WorkerPool, measure_cell

        if self.pool is None:
            self.pool = WorkerPool(self.model, self.logdir, spec.config.timeout_s)
        result = measure_cell(cell, dataclasses.replace(spec, model=self.model), self.pool)
        return result, LoadInfo.of(self.pool)

    def probe(self, threads: int, nbytes: int, timeout_s: float) -> dict:
        """The hardware probe (probe.py) on this node's host."""
        from .probe import ProbeProcess

        prober = ProbeProcess(threads, nbytes, timeout_s)
        try:
            return prober.measure()
        finally:
            prober.close()

    def logs(self, limit: int) -> dict[str, bytes]:
        """This node's worker logs (prepare's and each method's), the last `limit` bytes of each."""
        out = {}
        for name in sorted(os.listdir(self.logdir)):
            with open(os.path.join(self.logdir, name), "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
                out[name] = f.read()
        return out

    def release(self) -> None:
        """Its workers (and their engines' memory) let go; the next cell loads them again."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def close(self) -> None:
        self.release()


def _exit_with_raylet(raylet: int) -> None:
    """An actor whose raylet (its parent) died goes at once, its engines' workers with it (they
    die with their parent): left running, a lost node's cell would go on beside the cell sent
    in its place, timing each other where the two nodes share a host (seen: a killed raylet's
    actor measured on for minutes)."""
    while os.getppid() == raylet:
        time.sleep(RAYLET_CHECK_S)
    os._exit(1)


@dataclass
class Node:
    id: str
    host: str  # the address its raylet listens on: nodes on one host share it
    hostname: str
    labels: dict = field(default_factory=dict)
    actor: object = None
    kind: str = ""
    machine: dict = field(default_factory=dict)
    cells: int = 0  # cells sent to it
    alive: bool = True
    error: str | None = None  # why it was left out

    def record(self) -> dict:
        return {"id": self.id, "host": self.host, "hostname": self.hostname, "kind": self.kind}


class ClusterSession:
    """Connected to a cluster (a simulated one started for local:N), with one measuring actor
    on every selected node; close() lets go of all of it."""

    def __init__(self, address: ClusterAddress, node_filter: list[tuple[str, str | None]], model: str,
                 content_hash: str, show=lambda msg: None):
        self.keeper: subprocess.Popen | None = None
        self.nodes: list[Node] = []
        self.show = show
        try:
            import ray
        except ImportError:
            raise ClusterError("--cluster needs Ray (pip install ray==2.60.0, as requirements.txt pins it)") from None
        self.ray = ray
        self.ray_messages, self.ray_printer = None, None  # what Ray's driver would print (_route_ray_messages)
        target = self._start_local(address.local_nodes) if address.local_nodes else address.text
        if not address.local_nodes and target != "auto" and not target.startswith("ray://"):
            _reachable(target)
        show(f"connecting to the Ray cluster at {target}")
        try:
            ray.init(address=target, logging_level="ERROR", log_to_driver=False)
        except Exception as e:
            self.close()
            raise ClusterError(f"--cluster {address.text}: {_versions_differ(e) or _first_line(e)}") from None
        self.ray_messages = tempfile.NamedTemporaryFile("w", prefix="inferlab-ray-", suffix=".log", delete=False)
        self.ray_printer = _route_ray_messages(self.ray_messages)
        try:
            self._start_actors(node_filter, model, content_hash, show)
        except BaseException:
            self.close()
            raise

    def _start_local(self, n: int) -> str:
        from .cluster_local import ADDRESS_MARK

        errors = tempfile.TemporaryFile("w+")
        self.keeper = subprocess.Popen([sys.executable, "-m", "inferlab.cluster_local", str(n)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                       text=True, start_new_session=True)
        for line in self.keeper.stdout:  # until the address, or the keeper's end
            if line.startswith(ADDRESS_MARK):
                errors.close()
                return line[len(ADDRESS_MARK):].strip()
        errors.seek(0)
        last = [line for line in errors.read().splitlines() if line.strip()][-1:]
        errors.close()
        raise ClusterError(f"--cluster local:{n}: the simulated cluster did not start"
                           + (f" ({last[0].strip()[:300]})" if last else ""))

    def _start_actors(self, node_filter, model: str, content_hash: str, show) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        chosen = [n for n in alive if matches(n, node_filter)]
        if not chosen:
            raise ClusterError(f"no node of the cluster's {len(alive)} matches --nodes "
                               f"{','.join(k if v is None else f'{k}={v}' for k, v in node_filter)}")
        thread_env = {v: os.environ[v] for v in machine.THREAD_VARS if v in os.environ}
        measurer = self.ray.remote(NodeMeasurer)
        for n in chosen:
            node = Node(id=n["NodeID"], host=n.get("NodeManagerAddress", ""),
                        hostname=n.get("NodeManagerHostname", ""), labels=n.get("Labels") or {})
            node.actor = measurer.options(
                num_cpus=0, max_restarts=0, max_concurrency=1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False),
            ).remote(model, content_hash, thread_env)
            self.nodes.append(node)
        show(f"{len(self.nodes)} node{'s' * (len(self.nodes) != 1)} on "
             f"{len({n.host for n in self.nodes})} host{'s' * (len({n.host for n in self.nodes}) != 1)}: "
             "loading the model on each")
        mine = self.ray.__version__
        for node, ref in [(n, n.actor.describe.remote()) for n in self.nodes]:
            try:
                info = self.ray.get(ref)
            except Exception as e:  # its actor did not start: inferlab or the model missing there
                info = {"ray": mine, "machine": {}, "error": _first_line(e)}
            if info["ray"] != mine:
                raise ClusterError(f"node {node.hostname} ({node.host}) runs Ray {info['ray']}, this "
                                   f"machine {mine}: install the same version everywhere")
            node.machine, node.error = info["machine"], info["error"]
            if node.labels.get(MACHINE_LABEL):
                node.machine = {**node.machine, "name": node.labels[MACHINE_LABEL]}
            node.kind = machine_kind(node.machine)
            if node.error:
                show(f"node {node.hostname} ({node.host}) left out: {node.error}")
                node.alive = False
                self.retire(node)
        if not any(n.alive for n in self.nodes):
            raise ClusterError("no node can measure: " + "; ".join(
                f"{n.hostname} ({n.host}): {n.error}" for n in self.nodes))
        kinds = self.machines()
        if len(kinds) > 1:
            show(f"{len(kinds)} kinds of machine: every cell is measured on each ("
                 + "; ".join(machine.kind_names(kinds).values()) + ")")

    def retire(self, node: Node) -> None:
        try:
            self.ray.kill(node.actor)
        except Exception:
            pass

    def machines(self) -> dict[str, dict]:
        return {n.kind: n.machine for n in self.nodes if n.alive}

    def cells_for(self, cells: list[Cell]) -> list[Cell]:
        """The cells to measure: each once per kind of machine where there are several (the
        kind in the cell), as they are where there is one."""
        kinds = sorted(self.machines())
        if len(kinds) < 2:
            return cells
        return [dataclasses.replace(c, machine=kind) for c in cells for kind in kinds]

    def prepare(self, methods: list[str], timeout_s: float) -> dict[str, str]:
        """Each live node prepares every method (its own cache); the methods that failed on
        every node, with one node's reason."""
        nodes = [n for n in self.nodes if n.alive]
        answers = self.ray.get([n.actor.prepare.remote(methods, timeout_s) for n in nodes])
        failed = {}
        for method in methods:
            errors = [a[method] for a in answers if a[method]]
            if len(errors) == len(answers):
                failed[method] = errors[0]
        return failed

    def probe(self, threads: int, nbytes: int, timeout_s: float) -> list[dict]:
        """The hardware probe once on each host (on one of its live nodes, hosts one after
        another: a probe measures its host alone); each answer names its node."""
        out, seen = [], set()
        for node in self.nodes:
            if node.alive and node.host not in seen:
                seen.add(node.host)
                try:
                    answer = self.ray.get(node.actor.probe.remote(threads, nbytes, timeout_s))
                except Exception as e:
                    answer = {"error": f"probe on {node.hostname}: {_first_line(e)}"}
                out.append({**answer, "node": node.record()})
        return out

    def gather_logs(self, logdir: str) -> None:
        """Each live node's worker logs into logdir/node-ID (the first 8 characters of its id):
        what a failed method said on the node that ran it; and Ray's messages, into ray.log."""
        self.ray_messages.flush()
        if os.path.getsize(self.ray_messages.name):
            shutil.copyfile(self.ray_messages.name, os.path.join(logdir, "ray.log"))
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                logs = self.ray.get(node.actor.logs.remote(NODE_LOG_BYTES), timeout=60)
            except Exception:  # a node that went: the cell's result says why
                continue
            target = os.path.join(logdir, f"node-{node.id[:8]}")
            os.makedirs(target, exist_ok=True)
            for name, data in logs.items():
                with open(os.path.join(target, name), "wb") as f:
                    f.write(data)

    def close(self) -> None:
        try:
            for node in self.nodes:
                if node.alive:
                    try:
                        self.ray.get(node.actor.close.remote(), timeout=30)
                    except Exception:
                        pass
            if getattr(self, "ray", None) is not None:
                self.ray.shutdown()  # (also after a failed ray.init, which may have connected halfway)
        finally:
            if self.ray_printer is not None:
                from ray._private import worker

                worker.print_to_stdstream = self.ray_printer
            if self.ray_messages is not None:
                self.ray_messages.close()
                os.unlink(self.ray_messages.name)
                self.ray_messages = None
            if self.keeper is not None:
                self.keeper.stdin.close()  # the keeper shuts its nodes down
                try:
                    self.keeper.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.keeper.kill()
                self.keeper = None


class ClusterExecutor:
    """Sends each cell to a node of its kind, at most one cell per host at a time, spreading
    them over the nodes of a host (whose engines are loaded on one of its nodes at a time); a
    node lost mid-cell costs that cell, sent once more to another node of its kind, else
    recorded as failed. `done` gets every cell's result as it arrives."""

    def __init__(self, session: ClusterSession):
        self.session = session
        self.holding: dict[str, Node] = {}  # host -> the node whose engines are loaded there

    def run(self, cells: list[Cell], spec, done: Callable[[CellResult], None],
            starting: Callable[..., None] = lambda cell, where="": None) -> None:
        from .progress import node_name

        ray = self.session.ray
        pending = [(cell, 0) for cell in cells]  # (cell, tries so far)
        running: dict = {}  # ObjectRef -> (cell, tries, node)
        try:
            while pending or running:
                for cell, tries in [p for p in pending if not any(_takes(n, p[0]) for n in self.session.nodes)]:
                    pending.remove((cell, tries))
                    done(_failed(cell, "no node of the cluster is left to measure it" if not cell.machine
                                 else f"no node of its kind of machine ({cell.machine}) is left to measure it"))
                busy = {node.host for _, _, node in running.values()}
                for node, i in self._next_cells(pending, busy):
                    cell, tries = pending.pop(i)
                    self._hold_host(node)
                    node.cells += 1
                    starting(cell, node_name(node.record()))
                    running[node.actor.measure.remote(cell, spec)] = (cell, tries, node)
                if not running:  # (every cell left has a free node: none can be left here)
                    for cell, _ in pending:
                        done(_failed(cell, "no node took it"))
                    return
                ready, _ = ray.wait(list(running), num_returns=1)
                cell, tries, node = running.pop(ready[0])
                loads = None
                try:
                    result, loads = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:  # the measuring itself raised
                    result = _failed(cell, f"on node {node.hostname}: {_first_line(e)}")
                except ray.exceptions.RayError as e:  # the node, or its actor, is gone (lost, killed
                    # by Ray's memory monitor, crashed): it takes no more cells
                    node.alive = False
                    self.session.retire(node)
                    if tries == 0 and any(_takes(n, cell) for n in self.session.nodes):
                        self.session.show(f"node {node_name(node.record())} was lost during {cell.key} "
                                          f"({_first_line(e, 120)}): the cell goes once more to another node")
                        pending.insert(0, (cell, 1))
                        continue
                    result = _failed(cell, f"node {node.hostname} ({node.host}) was lost: {_first_line(e)}")
                result.node = node.record()
                done(result, loads)
        except KeyboardInterrupt:  # the running cells' actors go, their engines' processes with them
            for cell, _, node in running.values():
                node.alive = False
                self.session.retire(node)
                done(CellResult(cell=cell, status="interrupted", node=node.record()))
            raise

    def _hold_host(self, node: Node) -> None:
        """Engines stay loaded on one node of a host at a time: the node that measured the
        host's last cell lets its workers go before another node of the host loads its own
        (two nodes' loaded engines, KV caches at depth and batch, filled a 24 GiB host)."""
        last = self.holding.get(node.host)
        if last is not None and last is not node and last.alive:
            try:
                self.session.ray.get(last.actor.release.remote(), timeout=120)
            except Exception:  # it went: its processes with it
                pass
        self.holding[node.host] = node

    def _next_cells(self, pending: list[tuple[Cell, int]], busy: set[str]) -> list[tuple[Node, int]]:
        """Per host without a running cell, a node and the index in `pending` of the first cell
        it can take: of the host's nodes that can take one, the one that took the fewest cells."""
        out, taken = [], set()
        for node in sorted(self.session.nodes, key=lambda n: n.cells):
            if node.host in busy or not node.alive:
                continue
            i = next((i for i, (cell, _) in enumerate(pending) if i not in taken and _takes(node, cell)), None)
            if i is not None:
                out.append((node, i))
                taken.add(i)
                busy.add(node.host)
        # popped from the back first, so that the indices still point at their cells
        return sorted(out, key=lambda t: -t[1])


def _takes(node: Node, cell: Cell) -> bool:
    """A live node of the cell's kind of machine (any kind, where the sweep has one)."""
    return node.alive and cell.machine in ("", node.kind)


def _failed(cell: Cell, reason: str) -> CellResult:
    """A cell no node measured: every method failed with the reason (a resumed sweep runs it again)."""
    from .results import MethodResult

    return CellResult(cell=cell, status="failed",
                      methods=[MethodResult(method=m, status="failed", error=reason, threads=cell.threads)
                               for m in cell.methods])


def _route_ray_messages(log):
    """Ray's driver prints the cluster's error messages on standard output, a lost node's as
    dozens of lines of its state: they go to `log` (the sweep's logs/ray.log) instead, and the
    sweep says in one line what it did about it. Ray offers no switch for this: its printer is
    replaced in its module, where it exists. Returns the printer replaced (None: none was)."""
    from ray._private import worker

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        if not log.closed:
            log.write("\n".join(str(line) for line in data.get("lines", [])) + "\n")
            log.flush()

    original = getattr(worker, "print_to_stdstream", None)
    if original is not None:
        worker.print_to_stdstream = to_log
    return original


def _reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ClusterError(f"--cluster {address}: cannot reach it ({e.strerror or e})") from None


def _versions_differ(e: BaseException) -> str | None:
    """Ray's refusal of a cluster of other versions (its message spreads them over lines) in one
    line; None for any other error."""
    text = str(e)
    if "Version mismatch" not in text:
        return None
    ray_, python = re.findall(r"Ray: (\S+)", text), re.findall(r"Python: (\S+)", text)
    if len(ray_) < 2 or len(python) < 2:
        return _first_line(e)
    return (f"the cluster runs Ray {ray_[0]} on Python {python[0]}, this machine Ray {ray_[1]} on Python "
            f"{python[1]}: install the same versions everywhere")


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The error's first non-empty line, cut at a word before `limit` characters ("...")."""
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    if len(line) <= limit:
        return line
    return line[:limit - 3].rsplit(" ", 1)[0].rstrip(" :,;") + "..."
