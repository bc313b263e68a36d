#!/usr/bin/env python3
"""Measures the firmware images under QEMU and prints the table in docs/FIRMWARE.md.

For each image: flash (text + rodata + the loaded data's initial values) and
static RAM (data + bss; the `.bigram` section apart, in PSRAM/DDR) from the ELF,
peak stack and the memory plan from the image's own stats line, and executed
instructions per prompt token and per generated token, counted exactly by
the QEMU plugin tools/qemu-icount.c between the image's marks.

    python3 firmware/measure.py            # builds, runs, prints markdown
    python3 firmware/measure.py kernels    # the int8 kernels alone (Cortex-M4F),
                                           # instructions per multiply-accumulate
    python3 firmware/measure.py cores      # bare-metal AArch64 SmolLM2 at 1, 2 and 4
                                           # cores: work and idle per vCPU

Needs what `cargo run` in firmware/ needs, plus a C compiler for the plugin.
"""
import os, re, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The Cortex-M4F PSRAM model: `ember synth` with these arguments (as in
# std-runner/tests/firmware.rs), wide enough that weight multiplies dominate.
M4_PSRAM_MODEL = ["--dim", "512", "--layers", "2", "--heads", "8", "--kv-heads", "4",
                  "--ffn", "1536", "--vocab", "512", "--seed", "1"]
IMAGES = [
    ("Cortex-M4F (mps2-an386)", "thumbv7em-none-eabihf", "tiny", None),
    ("Cortex-M4F (mps2-an386)", "thumbv7em-none-eabihf", "smollm", "synth"),
    ("Cortex-M55 (mps3-an547)", "thumbv8m.main-none-eabihf", "smollm", "Q8_0"),
    ("AArch64 (virt, Cortex-A72)", "aarch64-unknown-none", "smollm", "Q4_1"),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def tool(name):
    sysroot = sh(["rustc", "--print", "sysroot"], cwd=HERE).stdout.strip()
    for dirpath, _, files in os.walk(os.path.join(sysroot, "lib", "rustlib")):
        if name in files:
            return os.path.join(dirpath, name)
    sh(["rustup", "component", "add", "llvm-tools"], cwd=HERE)
    return tool(name)


def sections(elf):
    out = sh([tool("llvm-size"), "-A", elf]).stdout
    size = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) >= 3 and p[0].startswith("."):
            size[p[0]] = int(p[1])
    flash = sum(size.get(s, 0) for s in [".vector_table", ".text", ".rodata", ".data", ".gnu.sgstubs"])
    ram = size.get(".data", 0) + size.get(".bss", 0) + size.get(".uninit", 0)
    return flash, ram, size.get(".bigram", 0)


def matmul_macs(dim, layers, heads, kv_heads, ffn, vocab):
    head = dim // heads
    q, kv = heads * head, kv_heads * head
    return layers * (dim * q + 2 * dim * kv + q * dim + 3 * dim * ffn) + vocab * dim


def kernel_costs(plugin):
    """The `kernels` image's cost marks on the Cortex-M4F: each `cost …` line
    pairs with the next two marks (64 rows; 576 columns for Q8_0, 512 for
    the 256-element super-blocks)."""
    target = "thumbv7em-none-eabihf"
    sh(["cargo", "build", "--release", "--locked", "--target", target, "--bin", "kernels"], cwd=HERE)
    elf = os.path.join(HERE, "target", target, "release", "kernels")
    env = dict(os.environ, EMBER_QEMU_PLUGIN=plugin)
    r = subprocess.run([os.path.join(HERE, "qemu-run"), elf], cwd=HERE, env=env,
                       capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        sys.exit(f"kernels: exit {r.returncode}\n{log}")
    marks = [int(m) for m in re.findall(r"icount mark \d+ (\d+)", log)]
    costs = re.findall(r"cost (.+?) (\S+): marks around (\d+) multiply-accumulates \(rows (\d+), cols (\d+)", log)
    print("| weights | kernels | rows x cols | instr / weight MAC |")
    print("| --- | --- | --- | ---: |")
    for i, (what, table, macs, rows, cols) in enumerate(costs):
        per = (marks[2 * i + 1] - marks[2 * i]) / int(macs)
        what = {"kernel": "q8_0", "packed kernel": "q8_0 packed in fours"}.get(what, what)
        print(f"| {what} | {table} | {rows} x {cols} | {per:.2f} |")


def core_costs(plugin):
    """The AArch64 `smollm` image (SmolLM2 Q4_1) on 1, 2 and 4 cores of QEMU
    virt: instructions per token between its marks, per vCPU, with the
    instructions in the image's wait loop (`ember_a64_wait`) counted apart
    as idle (QEMU executes WFE as a yield, so a waiting vCPU spins)."""
    target = "aarch64-unknown-none"
    sh(["cargo", "build", "--release", "--locked", "--target", target, "--bin", "smollm"], cwd=HERE)
    elf = os.path.join(HERE, "target", target, "release", "smollm")
    syms = dict((n, int(a, 16)) for a, _, n in
                (l.split() for l in sh([tool("llvm-nm"), elf]).stdout.splitlines() if len(l.split()) == 3))
    idle = f"idle={syms['ember_a64_wait']:x}-{syms['ember_a64_wait_end']:x}"
    home = os.environ.get("EMBER_HOME", os.path.expanduser("~/.cache/ember"))
    print("| cores | instr / prompt token (work, all cores) | instr / generated token (work, all cores) "
          "| work per core / generated token | each core's share | idle per core / generated token |")
    print("| ---: | ---: | ---: | --- | --- | --- |")
    for cores in (1, 2, 4):
        env = dict(os.environ, EMBER_QEMU_PLUGIN=f"{plugin},cpus=on,{idle}",
                   EMBER_FIRMWARE_CORES=str(cores),
                   EMBER_FIRMWARE_MODEL=os.path.join(home, "SmolLM2-135M-Instruct.Q4_1.gguf"))
        r = subprocess.run([os.path.join(HERE, "qemu-run"), elf], cwd=HERE, env=env,
                           capture_output=True, text=True)
        log = r.stdout + r.stderr
        if r.returncode != 0 or f"cores={cores}" not in log:
            sys.exit(f"{cores} cores: exit {r.returncode}\n{log}")
        marks = []
        for line in re.findall(r"icount mark \d+ \d+(.*)", log):
            marks.append([(int(w), int(i)) for w, i in re.findall(r"cpu\d+=(\d+)/(\d+)", line)])
        prompt = len(re.search(r"prompt ids=([\d,]+)", log).group(1).split(","))
        steps = len(re.search(r"run .* ids=([\d,]+)", log).group(1).split(",")) - 1
        m0, m1, m2 = marks[:3]
        pad = lambda m: m + [(0, 0)] * (cores - len(m))
        m0, m1, m2 = pad(m0), pad(m1), pad(m2)
        work = [(m2[c][0] - m1[c][0]) / steps for c in range(cores)]
        idle_ = [(m2[c][1] - m1[c][1]) / steps for c in range(cores)]
        pre = sum(m1[c][0] - m0[c][0] for c in range(cores)) / prompt
        total = sum(work)
        print(f"| {cores} | {pre:,.0f} | {total:,.0f} | " + " / ".join(f"{w / 1e6:.1f} M" for w in work)
              + " | " + " / ".join(f"{w / total:.0%}" for w in work)
              + " | " + " / ".join(f"{i / 1e6:.1f} M" for i in idle_) + " |")


def main():
    tmp = tempfile.mkdtemp()
    plugin = os.path.join(tmp, "qemu-icount.so")
    sh(["cc", "-shared", "-fPIC", "-O2", "-o", plugin, os.path.join(ROOT, "tools", "qemu-icount.c")])
    if sys.argv[1:] == ["kernels"]:
        return kernel_costs(plugin)
    if sys.argv[1:] == ["cores"]:
        return core_costs(plugin)
    home = os.environ.get("EMBER_HOME", os.path.expanduser("~/.cache/ember"))
    rows = []
    for name, target, image, ty in IMAGES:
        sh(["cargo", "build", "--release", "--locked", "--target", target, "--bin", image], cwd=HERE)
        elf = os.path.join(HERE, "target", target, "release", image)
        env = dict(os.environ, EMBER_QEMU_PLUGIN=plugin)
        if ty == "synth":
            model = os.path.join(tmp, "m4-psram.gguf")
            sh(["cargo", "run", "--release", "--locked", "-q", "-p", "ember-runner", "--",
                "synth", model] + M4_PSRAM_MODEL, cwd=ROOT)
            env["EMBER_FIRMWARE_MODEL"] = model
        elif ty:
            env["EMBER_FIRMWARE_MODEL"] = os.path.join(home, f"SmolLM2-135M-Instruct.{ty}.gguf")
        r = subprocess.run([os.path.join(HERE, "qemu-run"), elf], cwd=HERE, env=env,
                           capture_output=True, text=True)
        log = r.stdout + r.stderr
        if r.returncode != 0:
            sys.exit(f"{name}: exit {r.returncode}\n{log}")
        marks = [int(m) for m in re.findall(r"icount mark \d+ (\d+)", log)]
        m = re.search(r"model: (\d+) bytes, dim (\d+), (\d+) layers, (\d+)/(\d+) heads, ffn (\d+), vocab (\d+)", log)
        model_bytes, dims = int(m.group(1)), [int(x) for x in m.groups()[1:]]
        macs = matmul_macs(*dims)
        prompt = len(re.search(r"prompt ids=([\d,]+)", log).group(1).split(","))
        stats = dict(re.findall(r"(\w+)=(\d+)", re.search(r"stats: .*", log).group(0)))
        flash, ram, big = sections(elf)
        for i, run in enumerate(re.findall(r"run kernels=(\S+) sampling=(\S+) .* ids=([\d,]+)", log)):
            kernels, sampling, ids = run
            m0, m1, m2 = marks[3 * i: 3 * i + 3]
            steps = len(ids.split(",")) - 1
            decode = (m2 - m1) / steps
            rows.append((name, image, kernels, sampling, model_bytes, flash, ram, big,
                         int(stats["stack_peak"]), int(stats["plan_bytes"]),
                         int(stats["static_arena_used"]), (m1 - m0) / prompt, decode, decode / macs))
    print("| target | image | kernels | sampling | model bytes | flash | static RAM | big RAM section | peak stack | memory plan | arena used | instr / prompt token | instr / generated token | instr / weight MAC |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join([r[0], r[1], r[2], r[3]] + [f"{x:,}" for x in r[4:11]]
                                + [f"{r[11]:,.0f}", f"{r[12]:,.0f}", f"{r[13]:.2f}"]) + " |")


if __name__ == "__main__":
    main()
