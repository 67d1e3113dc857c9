"""runtime on CPU: device and dtype names, autocast as torch runs it, the process environment, signals that
only record themselves, and timings that add up."""

import os
import signal
import threading
import time

import pytest
import torch

from runtime import (Env, Stopwatch, agree_on_signal, autocast, fetch, peak_flops, resolve_device, resolve_dtype,
                     setup_env, stop_on_signals, to_device)

CPU = torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_devices_on_a_machine_without_cuda():
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="'cuda:1': CUDA is not available .*device cpu"):
        resolve_device("cuda:1")


def test_dtype_names():
    assert resolve_dtype("auto", CPU) is torch.float32 and resolve_dtype("auto", CPU, training=True) is torch.float32
    assert [resolve_dtype(n, CPU) for n in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match=r"'fp8' is not one of \['auto', 'fp32', 'bf16', 'fp16'\]"):
        resolve_dtype("fp8", CPU)


def test_autocast_runs_matmuls_in_the_dtype_and_fp32_plain():
    a = torch.randn(4, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
    with autocast(CPU, torch.float32):
        assert (a @ a).dtype is torch.float32
    env = Env(0, 0, 1, CPU, torch.bfloat16)
    with env.autocast():
        assert (a @ a).dtype is torch.bfloat16


def test_host_copy_and_peak_on_cpu():
    t = torch.arange(5)
    assert torch.equal(to_device(t, CPU), t)
    assert peak_flops(CPU) is None


def test_only_rank_zero_prints(capsys):
    Env(0, 0, 2, CPU, torch.float32).log("step", 3)
    Env(1, 1, 2, CPU, torch.float32).log("other rank")
    assert capsys.readouterr().out == "step 3\n"
    assert Env(0, 0, 1, CPU, torch.float32).is_main and not Env(2, 0, 4, CPU, torch.float32).is_main


def test_setup_env_reads_the_launchers_ranks(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    env = setup_env("cpu", "bf16")
    assert (env.rank, env.local_rank, env.world, env.device, env.dtype) == (3, 1, 1, CPU, torch.bfloat16)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("LOCAL_RANK")
    env = setup_env("cpu", "auto")
    assert (env.rank, env.local_rank, env.dtype) == (0, 0, torch.float32)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        setup_env("cpu", "fp16")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_inside_only_record_themselves_and_handlers_come_back(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    flag = {}
    with stop_on_signals(flag):
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
    assert flag == {"signum": signum}
    assert {s: signal.getsignal(s) for s in before} == before
    env = Env(0, 0, 1, CPU, torch.float32)
    assert agree_on_signal(flag, env, check=False) == signum and agree_on_signal({}, env, check=True) == 0


def _agree_in_two_ranks(rank: int, store: str, out: str) -> None:
    """One of two gloo ranks: SIGTERM (15) reached rank 0, SIGUSR1 (10) rank 1, nothing in the second round."""
    import json

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        env = Env(rank, rank, 2, CPU, torch.float32)
        flag = {"signum": (signal.SIGTERM, signal.SIGUSR1)[rank]}
        answers = [agree_on_signal(flag, env, check=True), agree_on_signal(flag, env, check=False),
                   agree_on_signal({} if rank == 0 else {"signum": signal.SIGINT}, env, check=True)]
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(answers, f)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_ranks_agree_on_the_largest_signal_at_check_steps_only(tmp_path):
    """Two real gloo ranks that caught different signals both stop with the same one, the largest number
    (an all-reduce max: 15, not their sum 25 or the smaller 10); off the check steps both answer 0; a
    signal only one rank caught reaches the other."""
    import json

    import torch.multiprocessing as mp
    mp.spawn(_agree_in_two_ranks, args=(str(tmp_path / "store"), str(tmp_path / "answers")), nprocs=2)
    answers = [json.loads((tmp_path / f"answers.{rank}").read_text()) for rank in (0, 1)]
    assert answers == [[signal.SIGTERM, 0, signal.SIGINT]] * 2


def test_outside_the_main_thread_handlers_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        with stop_on_signals({}):
            seen.append(signal.getsignal(signal.SIGTERM))
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [before]


def test_stopwatches_time_their_region_and_add_up():
    with Stopwatch(CPU) as a:
        time.sleep(0.05)
    with Stopwatch(CPU) as b:
        time.sleep(0.02)
    assert 0.05 <= a.seconds() < 5 and 0.02 <= b.seconds() < 5
    assert (a + b).seconds() == pytest.approx(a.seconds() + b.seconds())
    assert (a + b + a).seconds() == pytest.approx(2 * a.seconds() + b.seconds())


def test_fetch_keeps_order_and_turns_each_kind_into_a_number():
    with Stopwatch(CPU) as clock:
        pass
    values = [torch.tensor(2.5), 7, torch.tensor([[1.5]], dtype=torch.bfloat16), clock, torch.tensor(3)]
    got = fetch(values)
    assert got[:3] == [2.5, 7, 1.5] and got[3] == clock.seconds() and got[4] == 3.0
    assert all(type(v) in (float, int) for v in got)
    assert fetch([1.0, "x"]) == [1.0, "x"]
    assert fetch([torch.tensor(4.0), "y"]) == [4.0, "y"]                        # a single tensor


class _FakeEvent:
    """Stands in for torch.cuda.Event: record() notes the host clock; elapsed_time in milliseconds."""
    made = []

    def __init__(self, enable_timing=False):
        self.enable_timing, self.synced = enable_timing, False
        _FakeEvent.made.append(self)

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        self.synced = True

    def elapsed_time(self, end):
        assert self.enable_timing and end.enable_timing, "CUDA events time only with enable_timing=True"
        return (end.t - self.t) * 1e3


def test_a_gpu_stopwatch_reads_its_timing_events_in_seconds(monkeypatch):
    """On a GPU: two timing events around the region, recorded at enter and exit; seconds() waits for the end
    event and turns its milliseconds into seconds (events faked here: the real ones need a GPU)."""
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    _FakeEvent.made.clear()
    with Stopwatch(torch.device("cuda", 0)) as sw:
        time.sleep(0.03)
    assert len(_FakeEvent.made) == 2 and all(e.enable_timing for e in _FakeEvent.made)
    assert 0.03 <= sw.seconds() < 5 and sw.end.synced
    assert sw.seconds() == pytest.approx(sw.end.t - sw.start.t, rel=1e-9)


def test_env_autocast_runs_in_the_envs_dtype():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Env(0, 0, 1, CPU, torch.bfloat16).autocast():
        assert (a @ b).dtype == torch.bfloat16
    with Env(0, 0, 1, CPU, torch.float32).autocast():
        assert (a @ b).dtype == torch.float32


def test_peak_flops_of_a_known_gpu_by_its_name(monkeypatch):
    """peak_flops: the table's entry whose key is in the device's name (asked of that device); unknown: None."""
    from runtime import PEAK_FLOPS

    asked = []
    names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA GeForce RTX 4090"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: asked.append(device) or names[device.index])
    assert peak_flops(torch.device("cuda", 0)) == PEAK_FLOPS["H100"] == 989e12
    assert peak_flops(torch.device("cuda", 1)) is None
    assert asked == [torch.device("cuda", 0), torch.device("cuda", 1)] and peak_flops(CPU) is None


@pytest.fixture
def gpu_setup(monkeypatch):
    """setup_env as on a GPU machine (faked): torch.cuda.set_device records the devices made current (the list
    yielded); the TF32 flags setup_env turns on are put back after the test."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    yield current
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("device, world, local_rank, expected", [
    ("auto", 1, 3, "cuda:3"), ("cuda:1", 1, 3, "cuda:1"), ("cuda", 2, 1, "cuda:1")])
def test_on_gpus_each_process_takes_its_local_ranks_device_and_tf32(monkeypatch, gpu_setup, device, world, local_rank,
                                                                     expected):
    """setup_env on a GPU machine (faked): "auto", or any CUDA device with several processes, is cuda:LOCAL_RANK;
    a named device with one process stays as named; the device is made current and TF32 matmuls enabled."""
    import runtime

    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(runtime, "resolve_device", lambda d: torch.device("cuda") if d == "auto" else torch.device(d))
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: True)            # joined already
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    env = runtime.setup_env(device, "fp32")
    assert (env.device, env.world, env.local_rank) == (torch.device(expected), world, local_rank)
    assert gpu_setup == [torch.device(expected)] and env.dtype == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("n, text", [(3 * 2**20, "3.00 MiB"), (2**30 - 2**10, "1,024.00 MiB"), (2**30, "1.00 GiB"),
                                     (8192 * 2**30 + 2**29, "8,192.50 GiB")])
def test_sizes_read_in_mib_below_a_gib_and_in_gib_from_one(n, text):
    from runtime import size
    assert size(n) == text


def test_host_tensors_go_to_a_gpu_through_pinned_memory_without_blocking():
    """to_device: on a GPU, pin_memory() then .to(device, non_blocking=True) (recorded: the real copy needs a
    GPU); on the CPU the tensor as it is."""
    from runtime import to_device

    class Host:
        def __init__(self):
            self.calls = []

        def pin_memory(self):
            self.calls.append("pin")
            return self

        def to(self, device, non_blocking=False):
            self.calls.append((device, non_blocking))
            return "on the device"
    t, gpu = Host(), torch.device("cuda", 0)
    assert to_device(t, gpu) == "on the device" and t.calls == ["pin", (gpu, True)]
    x = torch.arange(3)
    assert torch.equal(to_device(x, CPU), x) and to_device(x, CPU).device == CPU


def test_autocast_runs_in_the_dtype_it_is_given_not_the_devices_default():
    """On CPU torch's autocast defaults to bf16; asked for fp16 it must run fp16."""
    a = torch.randn(4, 4)
    with autocast(CPU, torch.float16):
        assert (a @ a).dtype is torch.float16


def test_host_tensors_on_the_cpu_are_copied_without_pinning():
    calls = []

    class Host:
        def pin_memory(self):
            calls.append("pin")

        def to(self, device, non_blocking=False):
            calls.append((device, non_blocking))
            return "copied"
    assert to_device(Host(), CPU) == "copied" and calls == [(CPU, False)]


@pytest.mark.parametrize("bf16, training, expected", [
    (True, False, torch.bfloat16), (True, True, torch.bfloat16),
    (False, False, torch.float32), (False, True, torch.float16)])
def test_auto_precision_on_a_gpu_is_bf16_where_it_has_it_else_fp16_only_for_training(monkeypatch, bf16, training,
                                                                                     expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    gpu = torch.device("cuda", 0)
    assert resolve_dtype("auto", gpu, training=training) is expected
    if not training:
        assert resolve_dtype("auto", gpu) is expected                      # inference is the default
    assert resolve_dtype("fp16", gpu) is torch.float16 and resolve_dtype("auto", CPU, training) is torch.float32


def test_auto_device_is_cuda_where_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == CPU and resolve_device("cuda:1") == torch.device("cuda", 1)


def _meminfo(monkeypatch, text):
    """runtime reads `text` as /proc/meminfo (any other path does not exist)."""
    import io

    import runtime

    def fake_open(path, *args, **kwargs):
        if path != "/proc/meminfo":
            raise FileNotFoundError(path)
        return io.StringIO(text)
    monkeypatch.setattr(runtime, "open", fake_open, raising=False)


def test_free_host_memory_is_meminfos_available_kib_in_bytes(monkeypatch):
    from runtime import free_memory

    _meminfo(monkeypatch, "MemTotal:       16000000 kB\nMemFree:          200000 kB\n"
                          "MemAvailable:    7340032 kB\nHugePages_Total:       0\n")
    assert free_memory(CPU) == 7340032 * 1024
    assert free_memory(torch.device("mps")) is None                      # neither a GPU nor the host
    _meminfo(monkeypatch, "MemTotal:       16000000 kB\n")                 # an old kernel: no MemAvailable
    assert free_memory(CPU) is None


def test_free_gpu_memory_is_the_free_half_of_mem_get_info_for_that_gpu(monkeypatch):
    from runtime import free_memory

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (3 * 2**30, 80 * 2**30))
    gpu = torch.device("cuda", 1)
    assert free_memory(gpu) == 3 * 2**30 and asked == [gpu]


def test_a_request_over_the_free_memory_is_refused_before_allocating(monkeypatch):
    import runtime

    monkeypatch.setattr(runtime, "free_memory", lambda device: 100 * 2**20)
    runtime.require_memory(100 * 2**20, CPU, "the cache", "use fewer rows")          # exactly what is free: fine
    with pytest.raises(ValueError, match=r"the cache needs 100.00 MiB, more than the 100.00 MiB free on cpu: "
                                         "use fewer rows"):
        runtime.require_memory(100 * 2**20 + 1, CPU, "the cache", "use fewer rows")
    monkeypatch.setattr(runtime, "free_memory", lambda device: None)                 # cannot be told: no check
    runtime.require_memory(2**60, CPU, "the cache", "use fewer rows")


@pytest.mark.parametrize("device, world, backend", [("cpu", 2, "gloo"), ("cuda", 2, "nccl"), ("cuda", 3, "nccl"),
                                                    ("cpu", 1, None)])
def test_several_processes_join_one_group_nccl_on_gpus_and_gloo_on_cpus(monkeypatch, gpu_setup, device, world,
                                                                           backend):
    import runtime

    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(runtime, "resolve_device", torch.device)
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    joined = []
    monkeypatch.setattr(runtime.dist, "init_process_group", joined.append)
    runtime.setup_env(device, "fp32")
    assert joined == ([backend] if backend else [])


@pytest.mark.parametrize("precision, bf16, expected", [("fp16", True, torch.float16), ("auto", False, torch.float16),
                                                       ("auto", True, torch.bfloat16)])
def test_training_on_a_gpu_may_run_fp16_and_auto_picks_the_training_precision(monkeypatch, gpu_setup, precision, bf16,
                                                                              expected):
    """fp16 is refused on CPU only; "auto" is resolved for training: fp16 (with a scaler) where bf16 is missing."""
    import runtime

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(runtime, "resolve_device", torch.device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert runtime.setup_env("cuda:0", precision).dtype is expected
