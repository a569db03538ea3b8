"""A worker cut off from Redis mid-job loses the job, and nothing it writes afterwards counts.

Issue #19, item 4. Two network namespaces stand for two hosts (netns.py, as test_multihost.py):

    namespace a  10.203.0.1  redis-server (the test's own), the rescuing worker
    namespace b  10.203.0.2  the worker that is cut off, REDIS_URL across the veth

Both are real ``celery worker`` processes (prefork, the default pool of ``chainrule worker``)
with a 2 s lease and a 0.5 s sweep. The job's first delivery goes to a queue only the worker in
b consumes, so the test knows which worker to cut; every later send (the sweep's) goes to the
deployment's queue, which both consume. Mid-job, b's link goes down: its trainer is left
waiting on a write that goes nowhere (its TCP connection stalls; it does not know it is cut
off), its lease lapses, the sweep of the worker in a requeues the job and that worker resumes
it from its checkpoint. Once it has passed the step where b stopped, the link comes back: b's
stalled write reaches Redis, is refused by the fence (LeaseLost), and b gives the job up.

Checked: the job's whole history is steps 1..N each exactly once, it succeeded, its result
is present and bit for bit that of an uninterrupted run, ``attempts == 2``; the worker in b
logged that it lost the lease, changed nothing of the job after (hash, history, result) and
keeps serving: a second job, sent once the worker in a has stopped, runs on it.

The suite's shared Redis listens on the root namespace's loopback only, which no other
namespace reaches, so this test runs a redis-server of its own inside namespace a (as
test_multihost.py does); the test process reaches it through its unix socket (a path in the
file system: unix sockets are not network-namespaced). Needs root and ``redis-server``;
skipped, saying why, where network namespaces are not permitted.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis

import graphspec
import runtime
from worker.celery_app import make_celery
from worker.dispatch import send_job
from worker.settings import Settings
from worker.store import JobStore, encode_tensors

from .conftest import EXAMPLES, wait_for
from .netns import ADDR_A, NetnsPair, Proc, base_env, netns_pair, set_link  # noqa: F401 (netns_pair: the fixture)
from .promise import assert_as_if_uninterrupted

pytestmark = pytest.mark.faults

REDIS_PORT = 6379  # inside namespace a: private, cannot collide
LEASE_TTL_S, SWEEP_INTERVAL_S = 2.0, 0.5
# Longer than any cut here and than redis-py's socket timeout (30 s, JobStore.connect): a trainer
# whose stalled read times out retries on a fresh connection and meets the fence, instead of
# giving up with the Redis error (which it does once this budget is spent: the job is safe
# either way, but then the test could not tell a refused write from a timeout).
REDIS_OUTAGE_S = 120.0
TENANT = "partition"
SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "batch_size": 16, "report_every": 1, "checkpoint_every": 1000,
        "seed": 5}
# [mid-job]: long, so the rescuer still trains when b's write arrives (TCP resends it on its own
# backoff, up to a few seconds after the link is back); [after-success]: short, so the link
# is down only a few seconds more than the lease
STEPS = {"mid-job": 30_000, "after-success": 10_000}
CUT_AFTER_STEP = 2500  # past two checkpoints
SECOND_SPEC = {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 2000, "batch_size": 16, "report_every": 1,
               "seed": 6}


def _worker_cmd(hostname: str, queues: list[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=prefork", "--concurrency=1",
            "-Q", ",".join(queues), "-n", hostname, "--without-gossip", "--without-mingle", "--loglevel=INFO"]


def _wait_ready(celery, procs: list[Proc], hostnames: list[str], timeout: float = 40.0) -> None:
    pending = set(hostnames)

    def answered():
        for proc in procs:
            assert proc.proc.poll() is None, f"{proc.name} exited during startup\n{proc.log()}"
        for reply in celery.control.ping(destination=sorted(pending), timeout=1) or []:
            pending.difference_update(reply)
        return not pending

    wait_for(answered, timeout=timeout, interval=0.1, message=f"workers {sorted(pending)} to answer a ping")


@pytest.mark.parametrize("link_back", ["mid-job", "after-success"])
def test_a_worker_cut_off_from_redis_is_fenced_off_and_its_job_resumes_elsewhere(netns_pair: NetnsPair,
                                                                                  tmp_path: Path, link_back: str):
    """``link_back``: the link comes back while the rescuer still trains the job (b's stalled write
    meets the rescuer's lease) or once the job has succeeded (it meets a finished job)."""
    spec = {**SPEC, "steps": STEPS[link_back]}
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("needs `redis-server` on PATH (e.g. apt-get install redis-server)")
    a, b = netns_pair.a, netns_pair.b
    namespace = f"crtest-part-{uuid.uuid4().hex[:10]}"
    queue, first_queue = f"{namespace}.train", f"{namespace}.train.first"
    cutoff_name, rescuer_name = f"cutoff@{b}", f"rescuer@{a}"
    worker_env = {**base_env(), "CHAINRULE_NAMESPACE": namespace, "CHAINRULE_QUEUE": queue,
                  "CHAINRULE_LEASE_TTL_S": str(LEASE_TTL_S), "CHAINRULE_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
                  "CHAINRULE_REDIS_OUTAGE_S": str(REDIS_OUTAGE_S)}
    socket_dir = tempfile.TemporaryDirectory(prefix="crt-part-")  # short: a unix socket's path has a limit
    sock = f"{socket_dir.name}/redis.sock"
    settings = Settings(redis_url=f"redis+socket://{sock}", namespace=namespace, queue=queue,
                        lease_ttl_s=LEASE_TTL_S, sweep_interval_s=SWEEP_INTERVAL_S)
    procs: list[Proc] = []
    store = celery = None

    def logs() -> str:
        return "\n".join(p.log() for p in procs)

    try:
        procs.append(Proc("redis-server", a, [redis_server, "--bind", ADDR_A, "127.0.0.1", "--port", str(REDIS_PORT),
                                              "--protected-mode", "no", "--unixsocket", sock, "--unixsocketperm", "700",
                                              "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
                                              "--daemonize", "no"], base_env(), tmp_path / "redis.log"))
        client = redis.Redis(unix_socket_path=sock, socket_timeout=10)
        store = JobStore(client, settings)

        def redis_up():
            try:
                return store.ping()
            except redis.ConnectionError:
                return False

        wait_for(redis_up, timeout=10, interval=0.05, message="redis-server in namespace a")
        celery = make_celery(settings)
        cutoff = Proc("worker in b (cut off)", b, _worker_cmd(cutoff_name, [queue, first_queue]),
                      {**worker_env, "REDIS_URL": f"redis://{ADDR_A}:{REDIS_PORT}/0"}, tmp_path / "cutoff.log")
        rescuer = Proc("worker in a (rescuer)", a, _worker_cmd(rescuer_name, [queue]),
                       {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0"}, tmp_path / "rescuer.log")
        procs += [cutoff, rescuer]
        _wait_ready(celery, procs, [cutoff_name, rescuer_name])

        graph, data = graphspec.load(EXAMPLES / "logistic_regression.json"), runtime.load_tensors(
            EXAMPLES / "data" / "seed_data.json")
        graph_id = store.put_graph(TENANT, graph)
        job_id, _ = store.create_job(TENANT, graph_id, spec, encode_tensors(data))
        send_job(celery, settings, job_id, 600, queue=first_queue)
        store.mark_sent(job_id)
        wait_for(lambda: (j := store.get_job(job_id)).state == "running" and j.step > CUT_AFTER_STEP, timeout=30,
                 interval=0.01, message="the job to be well under way in b")
        assert store.get_job(job_id).worker == cutoff_name

        # -- the cut ---------------------------------------------------------------------
        set_link(b, netns_pair.veth_b, up=False)
        cut_at, cut_wall = time.monotonic(), time.time()
        lease_key = store.job_key(job_id, "lease")
        figures: dict[str, float | int | str] = {}

        def lease_lapsed():
            holder = client.get(lease_key)
            return holder is None or not holder.decode().startswith(cutoff_name + ":")

        wait_for(lease_lapsed, timeout=LEASE_TTL_S + 10, interval=0.01, message="b's lease to lapse")
        figures["lease lapsed after (s)"] = round(time.monotonic() - cut_at, 2)
        # b can write nothing now: what it reached is what it wrote before the cut
        reached = store.step_count(job_id)
        figures["steps written by b"] = reached
        checkpoint = runtime.Checkpoint.from_bytes(store.get_blob(job_id, "checkpoint"))
        figures["checkpoint at step"] = checkpoint.step
        assert 0 < checkpoint.step <= reached < spec["steps"], (checkpoint.step, reached)

        resumed = wait_for(lambda: (j := store.get_job(job_id)).worker == rescuer_name and j.state == "running"
                           and j.step > reached and j, timeout=30, interval=0.01,
                           message="the rescuer to resume the job past the step b reached")
        figures["requeued by the sweep after (s)"] = round(resumed.requeued - cut_wall, 2)
        figures["resumed (started by a) after (s)"] = round(resumed.started - cut_wall, 2)
        figures["past b's last step after (s)"] = round(time.monotonic() - cut_at, 2)
        assert resumed.attempts == 2, resumed

        # b does not know it is cut off: its trainer waits on a write that goes nowhere
        assert f"job {job_id}: lease lost" not in cutoff.log_path.read_text(errors="replace")

        def finished():
            job = store.get_job(job_id)
            return job.state in ("succeeded", "failed", "cancelled") and job

        if link_back == "after-success":
            job = wait_for(finished, timeout=90, interval=0.05, message="the job to finish on the rescuer")
            figures["succeeded on a after (s)"] = round(time.monotonic() - cut_at, 2)
            before_b_returns = _snapshot(client, store, job_id)

        # -- the link comes back -----------------------------------------------------------
        set_link(b, netns_pair.veth_b, up=True)
        up_at = time.monotonic()
        figures["link down for (s)"] = round(up_at - cut_at, 2)
        gave_up = f"job {job_id}: lease lost (the sweep requeued it or another trainer holds it); stopped"
        wait_for(lambda: gave_up in cutoff.log_path.read_text(errors="replace"), timeout=60, interval=0.02,
                 message="the worker in b to give the job up once its link is back")
        figures["b gave up after the link came back (s)"] = round(time.monotonic() - up_at, 2)
        figures["job state when b gave up"] = store.get_job(job_id).state

        def after_giving_up() -> str:
            text = cutoff.log_path.read_text(errors="replace")
            return text.split(gave_up, 1)[1] if gave_up in text else ""

        # and its task ends there, as Celery records it: no retry, no error
        wait_for(lambda: ": 'lease lost'" in after_giving_up(), timeout=10, interval=0.02, message="b's task to end")

        job = wait_for(finished, timeout=90, interval=0.05, message="the job to finish on the rescuer")
        if link_back == "after-success":
            assert _snapshot(client, store, job_id) == before_b_returns, "b changed the job after it succeeded"
        assert job.state == "succeeded", (job, logs())
        assert job.worker == rescuer_name and job.lease.startswith(rescuer_name + ":"), job
        assert job.attempts == 2 and job.step == spec["steps"], job
        assert_as_if_uninterrupted(store, job_id, graph, data, spec)  # steps 1..N each once, the result, bit for bit
        # Who wrote each entry: b every one up to where it was cut off (dated before the cut), the
        # rescuer every one after (dated after it started): none of b's late writes got in. The
        # series (the same entries as numbers) holds exactly the stream's entries: no stray rows.
        series = store.read_series(job_id)
        assert series is not None, "the job's series does not match its stream"
        steps, times = series.values[:, series.column("step")], series.values[:, series.column("time")]
        assert steps.tolist() == list(range(1, spec["steps"] + 1))
        assert (times[:reached] < cut_wall).all(), "an entry up to b's last step is dated after the cut"
        assert (times[reached:] >= resumed.started).all(), "an entry after b's last step is not the rescuer's"
        after_success = _snapshot(client, store, job_id)

        # -- b keeps serving -------------------------------------------------------------
        rescuer.stop()  # warm shutdown of an idle worker: from now on b is the only consumer
        assert cutoff.proc.poll() is None, f"the cut-off worker died\n{cutoff.log()}"
        assert celery.control.ping(destination=[cutoff_name], timeout=5), "b does not answer a ping"
        second_id, _ = store.create_job(TENANT, graph_id, SECOND_SPEC, encode_tensors(data))
        send_job(celery, settings, second_id, 600)  # the deployment's queue, as the API sends
        store.mark_sent(second_id)
        second = wait_for(lambda: (j := store.get_job(second_id)).state in ("succeeded", "failed", "cancelled") and j,
                          timeout=60, interval=0.05, message="a second job to run on the worker in b")
        assert second.state == "succeeded" and second.worker == cutoff_name and second.attempts == 1, second
        assert_as_if_uninterrupted(store, second_id, graph, data, SECOND_SPEC)

        # Nothing of the first job changed after it succeeded, b's return included.
        assert _snapshot(client, store, job_id) == after_success
        assert client.scard(store.active_key) == 0 and client.zcard(store.outbox_key) == 0
        figures["total test time (s)"] = round(time.monotonic() - cut_at, 1)
        print("\npartition figures:", figures)
    except BaseException:
        sys.stderr.write(logs() + "\n")
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()
        if celery is not None:
            celery.close()
        if store is not None:
            store.close()
        socket_dir.cleanup()


def _snapshot(client: redis.Redis, store: JobStore, job_id: str) -> tuple:
    """Everything of a job a stray writer could change: its hash, history, series and result."""
    return (client.hgetall(store.job_key(job_id)), client.xlen(store.job_key(job_id, "steps")),
            client.xrevrange(store.job_key(job_id, "steps"), count=1), client.strlen(store.job_key(job_id, "series")),
            client.get(store.job_key(job_id, "result")))
