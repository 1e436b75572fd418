"""What the benchmarks ran on: CPU model, cores, the SIMD flags that decide int8/fp16 speed,
memory, load, and the versions of everything that computes a number."""

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# CPU flags that matter for this project's kernels (VNNI: int8 dot products; bf16/fp16: half floats).
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "f16c")


def lscpu_fields():
    """{field: value} from `lscpu` (empty when it is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_seconds():
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    hertz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hertz, steal / hertz


def own_cpu_seconds():
    """CPU seconds used by this process and its finished children."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class OtherLoad:
    """How many CPUs *other* processes kept busy while the block ran: the machine's busy CPU time
    minus this process's and its children's, over the wall time. Unlike the load average it does
    not count our own work, so it tells whether a timing was disturbed."""

    def __enter__(self):
        self.start = (time.perf_counter(), cpu_seconds(), own_cpu_seconds())
        return self

    def __exit__(self, *exc):
        wall0, machine0, own0 = self.start
        wall, machine, own = time.perf_counter() - wall0, cpu_seconds(), own_cpu_seconds() - own0
        if machine is None or machine0 is None or wall <= 0:
            self.other_cpus = self.steal_cpus = None
            return
        self.other_cpus = round(max(0.0, (machine[0] - machine0[0]) - own) / wall, 2)
        self.steal_cpus = round((machine[1] - machine0[1]) / wall, 2)


def other_cpus_now(seconds=5.0):
    """CPUs other processes keep busy over the next `seconds` (we only sleep meanwhile)."""
    with OtherLoad() as load:
        time.sleep(seconds)
    return load.other_cpus


def memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions():
    import numpy
    import onnx
    import onnxruntime

    found = {"python": platform.python_version(), "numpy": numpy.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        found["torch"] = torch.__version__
        found["torch_threads"] = torch.get_num_threads()
    except ImportError:
        found["torch"] = None
    try:
        from ffx import tensorrt

        found["tensorrt"] = str(tensorrt.available_backend("tensorrt-rtx"))
    except Exception as e:  # not installed or unusable here: say which
        found["tensorrt"] = f"unavailable ({type(e).__name__})"
    from ffx import __version__

    found["ffx"] = __version__
    return found


def git_commit(repo):
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def describe(repo):
    fields = lscpu_fields()
    flags = set(fields.get("Flags", "").split())
    return {
        "cpu_model": fields.get("Model name") or platform.processor() or platform.machine(),
        "vendor": fields.get("Vendor ID"),
        "cpu_family": fields.get("CPU family"),
        "logical_cpus": os.cpu_count(),
        "cores_per_socket": fields.get("Core(s) per socket"),
        "threads_per_core": fields.get("Thread(s) per core"),
        "hypervisor": fields.get("Hypervisor vendor"),
        "l2_cache": fields.get("L2 cache"),
        "l3_cache": fields.get("L3 cache"),
        "flags": [flag for flag in INTERESTING_FLAGS if flag in flags],
        "memory_gib": memory_gib(),
        "system": f"{platform.system()} {platform.release()}",
        "versions": versions(),
        "git_commit": git_commit(repo),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
