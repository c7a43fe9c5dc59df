"""Sweeps on a Ray cluster (--cluster): addresses and node filters, a simulated two-node cluster
on this machine measuring a tiny model's cells (one at a time on this one host, each cell's
node recorded, a node stopped mid-cell costing only that cell, the record shape of a local
run), and a driver killed outright, then resumed."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from inferlab import cluster, sweep
from inferlab.progress import SweepProgress
from inferlab.results import load
from tests.test_cli import only_run_folder, run_cli
from tests.test_sweep import SWEEP_IN_CHILD, wait_for_a_saved_cell

ray = pytest.importorskip("ray")

@pytest.fixture(autouse=True)
def _small_node_probes(monkeypatch):
    """A cluster's nodes run the real hardware probe (conftest's fixed one stays on the driver):
    32 MB instead of 256 (the driver says how much)."""
    from inferlab import defaults

    monkeypatch.setattr(defaults, "PROBE_BYTES", 32 << 20)


CELLS = dict(methods=["kv-cache"], prompt_token_list=[4, 8], depth_list=[0, 6], new_token_list=[3],
             thread_list=[1], min_repeats=2, max_repeats=2, min_time_s=0.0, quality=False)


@pytest.mark.parametrize("text, nodes", [("auto", 0), ("local:2", 2), ("ray://10.0.0.5:10001", 0),
                                         ("10.0.0.5:6379", 0)])
def test_cluster_addresses(text, nodes):
    assert cluster.parse_address(text).local_nodes == nodes


@pytest.mark.parametrize("text", ["local:0", "local:x", "local:99", "nowhere", "ray://host", ""])
def test_bad_cluster_addresses_are_refused(text):
    with pytest.raises(ValueError, match="--cluster"):
        cluster.parse_address(text)


def test_node_filters_match_labels_and_resources():
    node = {"Labels": {"cpu": "avx512", "zone": "a"}, "Resources": {"CPU": 2.0, "fast": 1.0}}
    assert cluster.matches(node, cluster.parse_node_filter("cpu=avx512,fast"))
    assert cluster.matches(node, cluster.parse_node_filter("zone"))
    assert not cluster.matches(node, cluster.parse_node_filter("cpu=avx2"))
    assert not cluster.matches(node, cluster.parse_node_filter("gpu"))
    with pytest.raises(ValueError, match="--nodes"):
        cluster.parse_node_filter("cpu=")


def test_machine_kinds_tell_machines_apart_by_what_decides_speed():
    here = cluster.describe_here()["machine"]
    assert cluster.machine_kind(here) == cluster.machine_kind({**here, "hostname": "another-box"})
    assert cluster.machine_kind(here) != cluster.machine_kind({**here, "cpu": "another CPU"})


def test_a_nodes_error_is_one_line_cut_at_a_word():
    lost = RuntimeError("The actor c24c is unavailable: The actor is temporarily unavailable: RpcError: "
                        "RPC error: Socket closed\n  at a second line")
    assert cluster._first_line(lost) == ("The actor c24c is unavailable: The actor is temporarily "
                                         "unavailable: RpcError: RPC error: Socket closed")
    assert cluster._first_line(lost, 60) == "The actor c24c is unavailable: The actor is temporarily..."
    assert cluster._first_line(RuntimeError("")) == "RuntimeError"


def test_rays_messages_to_the_driver_go_to_the_sweeps_log(tmp_path):
    from ray._private import worker

    with open(tmp_path / "ray.log", "w") as log:
        original = cluster._route_ray_messages(log)
        try:
            assert original is not None  # the pinned Ray still prints through it
            worker.print_to_stdstream({"lines": ["a node was marked dead"], "pid": "raylet", "is_err": False})
        finally:
            worker.print_to_stdstream = original
    assert (tmp_path / "ray.log").read_text() == "a node was marked dead\n"


def test_bad_cluster_options_exit_2_with_one_line(tiny_models, tmp_path, capsys):
    base = ["sweep", "--model", tiny_models["llama"], "--methods", "kv-cache", "--prompt-tokens", "4",
            "--new-tokens", "3", "--output", tmp_path, "--quiet"]
    assert run_cli(*base, "--cluster", "127.0.0.1:1") == 2  # nothing listens on port 1
    assert "cannot reach it" in capsys.readouterr().err
    assert run_cli(*base, "--nodes", "fast") == 2
    assert "give --cluster too" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # no results folder


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


# a stand-in for a raylet: it starts an "actor" that watches it as a measuring actor does, relays
# the actor's pid once the watch runs, and waits to be killed
ACTOR = ("import os, threading, time; from inferlab.cluster import _exit_with_raylet; "
         "threading.Thread(target=_exit_with_raylet, args=(os.getppid(),), daemon=True).start(); "
         "print(os.getpid(), flush=True); time.sleep(60)")
RAYLET = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {ACTOR!r}]); time.sleep(60)"


def test_a_measuring_actor_goes_as_soon_as_its_raylet_dies():
    # a raylet killed outright leaves its workers running (seen with Ray 2.60: a lost node's
    # actor measured on for minutes beside the cell sent in its place on the same host)
    import psutil

    raylet = subprocess.Popen([sys.executable, "-c", RAYLET], stdout=subprocess.PIPE, text=True)
    actor = psutil.Process(int(raylet.stdout.readline()))
    raylet.kill()
    raylet.wait()
    time.sleep(1.0)
    alive = _alive(actor)
    if alive:
        actor.kill()
    assert not alive


def _alive(process) -> bool:
    """Running, and not a zombie (an exited orphan waits for whoever adopted it to reap it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cell_shape(d):
    """The keys of a cell's record, nested: what must be the same wherever it was measured."""
    if isinstance(d, dict):
        return {k: cell_shape(v) for k, v in d.items() if k not in ("counters",)}
    if isinstance(d, list):
        return [cell_shape(d[0])] if d else []
    return type(d).__name__ if d is not None else None


def test_a_sweep_on_two_nodes_one_cell_at_a_time_losing_one_node(two_nodes, tiny_models, tmp_path):
    c, worker = two_nodes
    starts, killed = [], threading.Event()

    class Watching(SweepProgress):
        def starting(self, cell, where=""):
            starts.append(where)
            if worker.node_id[:8] in where and sum(worker.node_id[:8] in w for w in starts) == 2:
                # the worker's second cell: its node stops while the cell runs
                threading.Timer(0.5, lambda: (c.remove_node(worker, allow_graceful=False), killed.set())).start()

    # cells of 8 runs of 40 new tokens (about 2 s): the node stops 0.5 s into one
    cells = {**CELLS, "new_token_list": [40], "min_repeats": 8, "max_repeats": 8}
    config = sweep.SweepConfig(model=tiny_models["llama"], output_dir=str(tmp_path / "c"), cluster=c.address, **cells)
    results, folder = sweep.run_sweep(config, lambda msg: None, lambda todo, done: Watching(todo, done, quiet=True))
    assert killed.is_set()
    assert results.status == "complete" and len(results.cells) == 4
    assert all(cr.status == "complete" and cr.method("kv-cache").ok for cr in results.cells)
    nodes = [cr.node["id"] for cr in results.cells]
    assert worker.node_id in nodes and len(set(nodes)) == 2  # spread over both
    assert len(starts) == 5  # the lost cell was sent once more, to the other node
    spans = sorted((cr.conditions["before"]["at"], cr.conditions["after"]["at"]) for cr in results.cells)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one host: never two cells at once
    assert set(results.machines) == {cr.node["kind"] for cr in results.cells}
    saved = load(os.path.join(folder, "results.json"))
    assert [cr.node for cr in saved.cells] == [cr.node for cr in results.cells]

    # the same cell measured here has a record of the same shape
    local = sweep.SweepConfig(model=tiny_models["llama"], output_dir=str(tmp_path / "l"),
                              **{**cells, "prompt_token_list": [4], "depth_list": [0]})
    mine, _ = sweep.run_sweep(local, lambda msg: None, lambda todo, done: SweepProgress(todo, done, quiet=True))
    theirs = next(cr for cr in results.cells if cr.cell.key == mine.cells[0].cell.key)
    assert cell_shape(mine.cells[0].to_dict()) == cell_shape(theirs.to_dict())
    assert mine.cells[0].node["id"] == "local" and mine.cells[0].node["kind"] in mine.machines


def test_every_cell_runs_once_on_each_kind_of_machine_and_never_mixes_them(two_nodes, tiny_models, tmp_path):
    from inferlab.compare import compare
    from inferlab.report.sweep import render

    c, _ = two_nodes
    named = c.add_node(num_cpus=1, labels={cluster.MACHINE_LABEL: "second-box"})  # the same CPU, named apart
    c.wait_for_nodes()
    try:
        config = sweep.SweepConfig(model=tiny_models["llama"], output_dir=str(tmp_path / "k"), cluster=c.address,
                                   **{**CELLS, "prompt_token_list": [4, 8], "depth_list": [0], "min_repeats": 1,
                                      "max_repeats": 1})
        results, folder = sweep.run_sweep(config, lambda msg: None,
                                          lambda todo, done: SweepProgress(todo, done, quiet=True))
    finally:
        c.remove_node(named)
    assert results.status == "complete" and len(results.machines) == 2
    (second,) = [k for k, m in results.machines.items() if m.get("name") == "second-box"]
    assert sorted((cr.cell.point, cr.cell.machine) for cr in results.cells) == sorted(
        (point, kind) for point in ("pp4+tg3 t1 b1", "pp8+tg3 t1 b1") for kind in results.machines)
    for cr in results.cells:  # each measured by a node of its kind; the named node, its kind's only
        assert cr.status == "complete" and cr.node["kind"] == cr.cell.machine
        assert (cr.node["id"] == named.node_id) == (cr.cell.machine == second)
    spans = sorted((cr.conditions["before"]["at"], cr.conditions["after"]["at"]) for cr in results.cells)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one host: never two cells at once
    saved = load(os.path.join(folder, "results.json"))
    names = {r["machine"] for r in saved.derived.cells}
    assert len(names) == 2 and "second-box" in names
    lines = compare(saved, results, "a", "b").lines  # cells pair with their own kind's only
    assert sorted(line.cell for line in lines) == sorted(cr.cell.key for cr in results.cells)
    assert "| machine |" in render(saved, [])
    logs = os.path.join(folder, "logs", f"node-{named.node_id[:8]}")  # each node's worker logs, gathered
    assert "kv-cache-t1.log" in os.listdir(logs) and os.path.getsize(os.path.join(logs, "kv-cache-t1.log"))


def test_a_node_with_another_ray_version_is_one_line_and_exit_2(two_nodes, tiny_models, tmp_path, capsys, monkeypatch):
    c, _ = two_nodes
    monkeypatch.setattr(ray, "__version__", "0.0.0")  # this driver's Ray, as the nodes hear it
    assert run_cli("sweep", "--model", tiny_models["llama"], "--methods", "kv-cache", "--prompt-tokens", "4",
                   "--new-tokens", "3", "--output", tmp_path, "--quiet", "--cluster", c.address) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "this machine Ray 0.0.0" in err and "install the same" in err
    assert not os.listdir(tmp_path)


def test_a_driver_killed_outright_takes_its_simulated_nodes_and_resumes(tiny_models, tmp_path, request):
    import psutil

    out = tmp_path / "s"
    args = ["sweep", "--model", tiny_models["llama"], "--methods", "kv-cache", "--prompt-tokens", "4,8",
            "--new-tokens", "40", "--repeats", "10", "--max-repeats", "10", "--min-time", "0", "--threads", "1",
            "--no-quality", "--quiet", "--cluster", "local:2", "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", SWEEP_IN_CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    request.addfinalizer(proc.kill)
    wait_for_a_saved_cell(out, 180)  # then kill it, inside the second cell (10 runs of 40 tokens: ~2.5 s)
    keepers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "inferlab.cluster_local" in " ".join(p.cmdline())]
    assert len(keepers) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    keepers[0].wait(timeout=60)  # the simulated nodes go with their driver
    folder = only_run_folder(out)
    first = {cr.cell.key: cr for cr in load(os.path.join(folder, "results.json")).cells if cr.status == "complete"}
    assert len(first) == 1
    assert run_cli(*args, "--resume", folder) == 0
    second = load(os.path.join(folder, "results.json"))
    assert second.status == "complete" and len(second.cells) == 2
    for cr in second.cells:
        assert cr.node["id"] != "local"
        if cr.cell.key in first:  # kept as measured before the kill
            assert cr.method("kv-cache").runs == first[cr.cell.key].method("kv-cache").runs
