/*
 * A QEMU TCG plugin that counts executed guest instructions and prints the
 * running count each time the guest executes a YIELD hint, which the Ember
 * firmware uses as a marker (`ember_firmware::mark`) and executes nowhere
 * else. Counts are exact and repeatable: the same image and inputs give the
 * same numbers whatever the host is doing.
 *
 * Debian's QEMU 7.2 supports plugins but ships neither plugins nor
 * qemu-plugin.h, so the few API items used are declared here (plugin API
 * version 1, QEMU 7.x).
 *
 *   cc -shared -fPIC -O2 -o qemu-icount.so tools/qemu-icount.c
 *   qemu-system-arm ... -plugin ./qemu-icount.so
 *
 * Output, on stderr: "icount mark <k> <count>" per marker, and
 * "icount total <count>" at exit. With the argument `profile=on`, also the
 * 40 translation blocks that executed the most instructions, as
 * "icount block <pc> <count>" lines (symbolize with llvm-addr2line). Instructions are counted per translation
 * block when the block starts, so a block cut short by an exception (a
 * semihosting call) counts whole; markers sit outside such blocks.
 *
 * Several vCPUs (`-smp N`): the default single counter is added to by every
 * vCPU without atomics, so under multi-threaded TCG it may lose counts. With
 * `cpus=on` each vCPU counts into its own counter (a callback per block
 * instead of an inline add: slower, exact), and every mark and the total
 * also print "cpu<i>=<work>/<idle>" per vCPU. `idle=LO-HI` (hexadecimal
 * addresses) counts the blocks that start in [LO, HI) as idle rather than
 * work: the Ember AArch64 image waits for work in `ember_a64_wait` ..
 * `ember_a64_wait_end` and nowhere else, and QEMU executes WFE as a yield,
 * so a waiting vCPU keeps running that loop. Marks still come from the
 * vCPU that executes YIELD (the image's primary core).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
    void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t i);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
    enum qemu_plugin_op op, void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
    void (*cb)(unsigned int vcpu, void *udata), enum qemu_plugin_cb_flags flags,
    void *udata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
    void (*cb)(qemu_plugin_id_t, void *), void *udata);
void qemu_plugin_outs(const char *s);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t count;
static uint64_t marks;

/* Per vCPU (`cpus=on`): [0] work, [1] idle. Each vCPU writes only its own. */
#define MAX_CPUS 64
static int per_cpu;
static uint64_t idle_lo, idle_hi;
static uint64_t cpu_n[MAX_CPUS][2];

/* Profile: instructions per block start address, in an open-addressing table. */
#define SLOTS 65536
static int profile;
/* Profile only while from <= marks passed < to (`from=K`, `to=L`). */
static uint64_t prof_from, prof_to = UINT64_MAX;
static uint64_t slot_pc[SLOTS];
static uint64_t slot_n[SLOTS];

static void on_block(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    if (marks < prof_from || marks >= prof_to) {
        return;
    }
    uint64_t key = (uint64_t)(uintptr_t)udata;
    uint64_t pc = key >> 16, n = key & 0xffff;
    for (uint64_t i = (pc * 0x9e3779b97f4a7c15ull) >> 48, k = 0; k < SLOTS; k++, i = (i + 1) % SLOTS) {
        if (slot_pc[i] == pc || slot_n[i] == 0) {
            slot_pc[i] = pc;
            slot_n[i] += n;
            return;
        }
    }
}

uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb,
    void (*cb)(unsigned int vcpu, void *udata), enum qemu_plugin_cb_flags flags,
    void *udata);

static void on_cpu_block(unsigned int vcpu, void *udata)
{
    uint64_t key = (uint64_t)(uintptr_t)udata;
    if (vcpu < MAX_CPUS) {
        cpu_n[vcpu][key >> 32] += key & 0xffffffffu;
    }
}

static void report(const char *what, uint64_t k)
{
    char line[96 + MAX_CPUS * 48];
    int at = 0;
    uint64_t total = count;
    int cpus = 0;
    if (per_cpu) {
        /* Other vCPUs' words are read while they run: exact for a vCPU that
         * is waiting (its work count does not move), approximate otherwise. */
        total = 0;
        for (int i = 0; i < MAX_CPUS; i++) {
            uint64_t w = __atomic_load_n(&cpu_n[i][0], __ATOMIC_RELAXED);
            uint64_t d = __atomic_load_n(&cpu_n[i][1], __ATOMIC_RELAXED);
            total += w + d;
            if (w + d) {
                cpus = i + 1;
            }
        }
    }
    if (k == UINT64_MAX) {
        at = snprintf(line, sizeof line, "icount %s %" PRIu64, what, total);
    } else {
        at = snprintf(line, sizeof line, "icount %s %" PRIu64 " %" PRIu64, what, k, total);
    }
    for (int i = 0; i < cpus; i++) {
        at += snprintf(line + at, sizeof line - at, " cpu%d=%" PRIu64 "/%" PRIu64, i,
                       __atomic_load_n(&cpu_n[i][0], __ATOMIC_RELAXED),
                       __atomic_load_n(&cpu_n[i][1], __ATOMIC_RELAXED));
    }
    snprintf(line + at, sizeof line - at, "\n");
    qemu_plugin_outs(line);
}

static void on_mark(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    report("mark", marks++);
}

/* YIELD: Thumb 0xbf10, AArch64 0xd503203f (little-endian bytes). */
static int is_yield(const struct qemu_plugin_insn *insn)
{
    const uint8_t *b = qemu_plugin_insn_data(insn);
    size_t n = qemu_plugin_insn_size(insn);
    if (n == 2) {
        return b[0] == 0x10 && b[1] == 0xbf;
    }
    if (n == 4) {
        uint32_t w;
        memcpy(&w, b, 4);
        return w == 0xd503203fu;
    }
    return 0;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (per_cpu) {
        uint64_t pc = qemu_plugin_tb_vaddr(tb);
        uint64_t idle = pc >= idle_lo && pc < idle_hi;
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_cpu_block, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)(idle << 32 | n));
    } else {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count, n);
    }
    if (profile) {
        uint64_t key = (qemu_plugin_tb_vaddr(tb) << 16) | (n & 0xffff);
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)key);
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        if (is_yield(insn)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    report("total", UINT64_MAX);
    for (int top = 0; profile && top < 120; top++) {
        uint64_t best = 0, at = 0;
        for (uint64_t i = 0; i < SLOTS; i++) {
            if (slot_n[i] > best) {
                best = slot_n[i];
                at = i;
            }
        }
        if (best == 0) {
            break;
        }
        char line[96];
        snprintf(line, sizeof line, "icount block 0x%" PRIx64 " %" PRIu64 "\n", slot_pc[at], best);
        qemu_plugin_outs(line);
        slot_n[at] = 0;
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
    const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "profile=on") == 0) {
            profile = 1;
        } else if (strncmp(argv[i], "from=", 5) == 0) {
            prof_from = strtoull(argv[i] + 5, NULL, 10);
        } else if (strncmp(argv[i], "to=", 3) == 0) {
            prof_to = strtoull(argv[i] + 3, NULL, 10);
        } else if (strcmp(argv[i], "cpus=on") == 0) {
            per_cpu = 1;
        } else if (strncmp(argv[i], "idle=", 5) == 0) {
            char *end;
            idle_lo = strtoull(argv[i] + 5, &end, 16);
            idle_hi = *end == '-' ? strtoull(end + 1, NULL, 16) : idle_lo;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
