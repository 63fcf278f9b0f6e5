"""A dead or stuck rank makes the others fail with an error instead of hanging (short PG timeout)."""

import os
import time

import pytest
import torch.multiprocessing as mp

from test_dist_parallel import free_port

TIMEOUT = 4.0  # seconds: the process-group timeout given to init_distributed


def worker(rank: int, port: int, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), NANOSEEK_DIST_CPU="1")
    import torch
    import torch.distributed as dist

    from nanoseek.dist.mesh import init_distributed

    init_distributed(TIMEOUT)
    dist.barrier()
    if rank == 1:
        if mode == "crash":
            os._exit(7)  # dies without cleanup, as a killed or OOM'd rank would
        time.sleep(60)  # "hang": alive but never joins the next collective
        os._exit(0)
    t = time.perf_counter()
    try:
        x = torch.ones(4)
        dist.all_reduce(x)
        msg = "no error"
    except Exception as e:  # noqa: BLE001 - whatever gloo raises, it must raise
        msg = f"{type(e).__name__}: {str(e)[:200]}"
    with open(out, "w") as f:
        f.write(f"{time.perf_counter() - t:.2f}\n{msg}")
    os._exit(3)


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_other_ranks_error_out_instead_of_hanging(tmp_path, mode):
    out = str(tmp_path / "rank0.txt")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, mode, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        procs[0].join(timeout=60)
        assert procs[0].exitcode == 3, f"rank 0 did not finish (exit code {procs[0].exitcode})"
        elapsed, msg = open(out).read().split("\n", 1)
        assert msg != "no error"
        assert float(elapsed) < TIMEOUT + 10, f"rank 0 took {elapsed}s to notice: {msg}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
