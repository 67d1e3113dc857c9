"""benchmarks.common on a (faked) GPU and on the CPU: timings are medians of synchronised wall times after a
warm-up, the device is described by what it is, peak memory reads in GiB, and a results file leaves out
local folders. References: a scripted clock, recorded CUDA calls, json.loads of the file written."""

import argparse
import json

import pytest
import torch

from benchmarks import common

GPU, CPU = torch.device("cuda", 1), torch.device("cpu")


def _fake_gpu(monkeypatch, name="NVIDIA H100 80GB HBM3"):
    """torch.cuda as on a machine with a GPU: available, named, synchronised (recorded), one GiB peak per call."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("peak", device))
                        or 3 * 2**30 + 2**29)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    return calls


def test_a_median_is_of_synchronised_wall_times_after_the_warmup(monkeypatch):
    calls = _fake_gpu(monkeypatch)
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0, 30.0, 32.0, 40.0, 44.0])     # 5, 1, 3, 2, 4 seconds
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    ran = []
    assert common.median_seconds(lambda: ran.append(1), GPU) == 3.0
    assert len(ran) == 1 + 5                                                  # one warm-up run, five timed
    assert calls == [("sync", GPU)] * 10                                      # before and after each timed run
    clock = iter([0.0, 2.5, 3.0, 3.5])
    assert common.median_seconds(lambda: None, CPU, warmup=0, repeats=2) == 1.5
    assert len(calls) == 10                                                   # the CPU needs no synchronising


def test_the_device_is_described_by_its_name_torch_cuda_and_threads(monkeypatch):
    cpu = common.device_info(CPU)
    assert cpu == {"device": "cpu", "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    _fake_gpu(monkeypatch)
    assert common.device_info(GPU) == {"device": "NVIDIA H100 80GB HBM3", "torch": torch.__version__,
                                       "cpu_threads": torch.get_num_threads(), "cuda": "12.4"}
    assert common.device_name("cpu") == "cpu" and common.device_name("cuda:1") == "NVIDIA H100 80GB HBM3"
    assert common.device_info(CPU) == cpu                                     # a CPU run on a GPU machine


def test_a_device_name_on_a_machine_without_a_gpu_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.device_name("cuda") == "cpu" and common.device_name("auto") == "cpu"


def test_peak_memory_is_the_gpus_peak_in_gib_and_none_on_the_cpu(monkeypatch):
    calls = _fake_gpu(monkeypatch)
    assert common.peak_memory_gb(GPU) == 3.5 and calls == [("peak", GPU)]
    assert common.peak_memory_gb(CPU) is None


def test_results_leave_out_folder_overrides_and_name_the_torch_version(tmp_path, capsys):
    out = tmp_path / "results" / "deep" / "train_speed_cpu.json"
    payload = {"rows": [{"tokens_per_s": 10.5}],
               "set": ["train.lr=1e-3", "data.data_dir=/scratch/me", "log_dir=/tmp/x", "model.name=dir_x=1",
                       "train.ckpt_dir=c"]}
    common.write_results(out, payload)
    assert json.loads(out.read_text()) == {"rows": [{"tokens_per_s": 10.5}],
                                           "set": ["train.lr=1e-3", "model.name=dir_x=1"], "torch": torch.__version__}
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert payload["set"][1] == "data.data_dir=/scratch/me"                   # the caller's payload is left alone
    common.write_results(tmp_path / "plain.json", {"rows": []})
    assert json.loads((tmp_path / "plain.json").read_text()) == {"rows": [], "torch": torch.__version__}


def test_results_go_to_a_file_named_for_the_benchmark_and_the_kind_of_device():
    assert common.default_out("decode_speed", GPU) == "benchmarks/results/decode_speed_cuda.json"
    assert common.default_out("decode_speed", CPU) == "benchmarks/results/decode_speed_cpu.json"


def test_a_device_this_machine_lacks_is_a_parse_error_saying_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.device_arg("cpu") == "cpu"
    refusal = r"^device 'cuda:3': CUDA is not available \(use device cpu\)$"
    with pytest.raises(argparse.ArgumentTypeError, match=refusal):
        common.device_arg("cuda:3")


def test_targets_print_one_aligned_line_each(capsys):
    common.print_targets([{"met": True, "target": "decode >= 100 tok/s", "value": 1234.5},
                          {"met": False, "target": "overhead <= 5%", "value": 7.25}])
    assert capsys.readouterr().out == ("  met      decode >= 100 tok/s: 1,234.500\n"
                                       "  not met  overhead <= 5%: 7.250\n")
