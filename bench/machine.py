"""What a benchmark must say about where it ran, and the PyTorch installations
to compare against. Shared by compare_torch.py, compare_training.py and
torch_train.py; needs no PyTorch itself (it asks each interpreter).

- cpu_model(), cpu_isa(): from /proc/cpuinfo.
- openblas_env(): OPENBLAS_CORETYPE for the CPU at hand, detected, never assumed:
  Debian 12's OpenBLAS (0.3.21) does not know CPUs newer than itself and falls
  back to its slowest kernels on them, so the widest core type the CPU's flags
  allow is named (SkylakeX with AVX-512, Haswell with AVX2 + FMA); a value the
  user set wins. Forcing SkylakeX on a CPU without AVX-512 dies with SIGILL.
- torch_interpreters(): the current PyTorch (scripts/torch-env's venv, made on
  demand) and Debian's python3-torch (1.13) when installed, each with its
  version and the BLAS library it really loaded (read from /proc/self/maps
  after a matrix product). A reference BLAS is refused: PyTorch over Debian's
  libblas3 runs the seed-001 epoch ~5x slower than over OpenBLAS, so the
  comparison would flatter normlab.
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_PYTHON = "/usr/bin/python3"


def _cpuinfo_field(name):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model():
    return _cpuinfo_field("model name") or "unknown CPU"


def cpu_flags():
    return set(_cpuinfo_field("flags").split())


def cpu_isa():
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX-512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "AVX" if "avx" in flags else "SSE"


def machine_line(threads=None):
    """'Intel(R) Xeon(R) ... (AVX-512), 2 CPUs' plus the thread count if given."""
    line = f"{cpu_model()} ({cpu_isa()}), {os.cpu_count()} CPUs"
    return line + (f"; {threads} thread(s)" if threads else "")


def openblas_env(env=None):
    """A copy of env (default os.environ) with OPENBLAS_CORETYPE chosen for this CPU."""
    env = dict(os.environ if env is None else env)
    if "OPENBLAS_CORETYPE" not in env:
        coretype = {"AVX-512": "SkylakeX", "AVX2": "Haswell"}.get(cpu_isa())
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
    return env


def normlab_version(binary):
    """`normlab --version`: the ISA its kernels were built for and the CPU."""
    run = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return run.stdout.strip() or f"{binary} --version failed: {run.stderr.strip()}"


# Run inside each interpreter: version, BLAS actually loaded, torch.compile's availability.
_PROBE = r"""
import json, sys
import torch
a = torch.randn(64, 64)
(a @ a).sum().item()
libs = set()
with open("/proc/self/maps") as f:
    for line in f:
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        name = path.rsplit("/", 1)[-1]
        if any(k in name for k in ("blas", "mkl", "lapack")):
            libs.add(path)
config = torch.__config__.show()
info = [l.split("=", 1)[1] for l in config.replace(",", "\n").split("\n") if "BLAS_INFO=" in l]
print(json.dumps({"version": torch.__version__, "libs": sorted(libs),
                  "blas_info": info[0].strip() if info else ""}))
"""


def describe_blas(probe):
    """PyTorch's build says MKL when MKL is linked in (PyPI's wheels); otherwise
    (Debian: BLAS_INFO=generic) the libblas.so.3 the loader picked decides."""
    libs, info = probe["libs"], probe["blas_info"]
    if info == "mkl":
        return "MKL (linked into torch)", []
    if any("/blas/libblas.so" in p for p in libs):
        return "reference BLAS", libs
    if any("openblas" in p for p in libs):
        return "OpenBLAS", libs
    if info == "mkl" or any("mkl" in p for p in libs):
        return "MKL", libs
    return (info or "unknown BLAS"), libs


def _probe(python, env):
    run = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        return None, (run.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(run.stdout.strip().splitlines()[-1]), ""


def current_torch_python():
    """The venv's python with the current PyTorch, made by scripts/torch-env if missing."""
    run = subprocess.run([os.path.join(REPO, "scripts", "torch-env")], stdout=subprocess.PIPE,
                         text=True)
    if run.returncode != 0:
        return None
    return run.stdout.strip().splitlines()[-1]


def torch_interpreters(want_current=True, want_debian=True):
    """[{label, python, version, blas, libs, env}], the current PyTorch first.

    Exits with a message when an interpreter's PyTorch runs over the reference
    BLAS; says on stderr what is missing when one is not installed."""
    found = []
    candidates = []
    if want_current:
        py = current_torch_python()
        if py:
            candidates.append(("current", py))
        else:
            print("machine: the current PyTorch is unavailable (scripts/torch-env failed)",
                  file=sys.stderr)
    if want_debian:
        candidates.append(("debian", DEBIAN_PYTHON))
    for kind, python in candidates:
        env = openblas_env()
        probe, err = _probe(python, env)
        if probe is None:
            if kind == "debian":
                print("machine: Debian's PyTorch 1.13 is not installed, left out "
                      "(apt-get install python3-torch libopenblas0-pthread)", file=sys.stderr)
            else:
                print(f"machine: {python}: {err}", file=sys.stderr)
            continue
        blas, libs = describe_blas(probe)
        if blas == "reference BLAS":
            sys.exit(f"machine: error: PyTorch {probe['version']} ({python}) runs over the "
                     f"reference BLAS ({', '.join(libs)}), ~5x slower than over OpenBLAS: the "
                     "comparison would be misleading. Install OpenBLAS "
                     "(apt-get install libopenblas0-pthread) or, if it is installed, select it "
                     "(update-alternatives --config libblas.so.3-x86_64-linux-gnu), and run again.")
        short = ".".join(probe["version"].split("+")[0].split(".")[:2])  # "2.15", "1.13"
        found.append({"label": f"PyTorch {probe['version']}", "short": short, "python": python,
                      "version": probe["version"], "blas": blas, "libs": libs, "env": env})
    if not found:
        sys.exit("machine: error: no PyTorch to compare against: run scripts/torch-env "
                 "(the current PyTorch from PyPI) or apt-get install python3-torch "
                 "libopenblas0-pthread")
    return found


def header_lines(interpreters, normlab_binary=None, threads=None):
    """The lines every comparison prints first."""
    lines = [f"machine: {machine_line(threads)}"]
    if normlab_binary:
        lines.append(f"normlab: {normlab_version(normlab_binary)}")
    for it in interpreters:
        core = it["env"].get("OPENBLAS_CORETYPE")
        extra = f", OPENBLAS_CORETYPE={core}" if it["blas"] == "OpenBLAS" and core else ""
        lines.append(f"{it['label']} ({it['python']}), BLAS: {it['blas']}{extra}")
    return lines
