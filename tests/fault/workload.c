/* A store's whole workload while its I/O fails (tests/fault/run.sh drives it):
 *
 *   workload setup  DB DIR N             N keys: even ones a quota of 1e9, odd ones a quota of 20
 *   workload run    DB DIR W ITERS PROB  one process: checks on random keys, and every 40th iteration an admin
 *                                        change (create, revoke, plan change, usage read = flush), with libfiu
 *                                        failing PROB of open/read/pread/write/pwrite/fsync/fdatasync/ftruncate/
 *                                        mmap/unlink/rename and posix_fallocate (wrapped below; libfiu has no
 *                                        failpoint for it); the store is opened under the faults too
 *   workload verify DB DIR               after the faults: integrity, exact counts, committed changes present
 *
 * Every call must answer a decision or an MS_ERR_* whose ms_last_error() names what failed; what each
 * process saw is kept in DIR/seen.W, a shared mapping made before the faults start (one u64 admission count
 * per key, then the ids of the keys it created), so the verification can compare. */
#include <dlfcn.h>
#include <fiu-control.h>
#include <fiu.h>
#include <sys/types.h>

#include "test_util.h"

#define NOW 1800000000000LL /* 2027-01-15T08:00:00Z */
#define MAX_KEYS 4096
#define MAX_CREATED 4096

/* posix_fallocate is how the counters file gets its blocks; this program links libms_auth.a statically,
 * so this definition is the one the library calls. */
static int fallocate_via_libc(int fd, off_t offset, off_t len, const char *name) {
    if (fiu_fail("ms/posix_fallocate")) return ENOSPC;
    int (*real)(int, off_t, off_t);
    void *sym = dlsym(RTLD_NEXT, name);
    memcpy(&real, &sym, sizeof real); /* POSIX's way round ISO C's object/function pointer rule */
    return real(fd, offset, len);
}
int posix_fallocate(int fd, off_t offset, off_t len) { return fallocate_via_libc(fd, offset, len, "posix_fallocate"); }
int posix_fallocate64(int fd, off_t offset, off_t len) { return fallocate_via_libc(fd, offset, len, "posix_fallocate64"); }

static const char *const failing[] = {
    "posix/io/oc/open",    "posix/io/rw/read",      "posix/io/rw/pread",   "posix/io/rw/write",
    "posix/io/rw/pwrite",  "posix/io/rw/writev",    "posix/io/rw/pwritev", "posix/io/sync/fsync",
    "posix/io/sync/fdatasync", "posix/io/rw/ftruncate", "posix/mm/mmap",    "posix/io/dir/unlink",
    "posix/io/dir/rename", "ms/posix_fallocate",
};
#define FAILING (sizeof failing / sizeof failing[0])

typedef struct {
    uint64_t admitted[MAX_KEYS];
    char created[MAX_CREATED][32];
    uint64_t n_created, checks, errors, silent_errors, admin_ok, admin_failed, open_failures;
} seen_t;

static char ids[MAX_KEYS][32], keys[MAX_KEYS][80];
static long limits[MAX_KEYS];

static size_t load_keys(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "r");
    size_t n = 0;
    while (f && n < MAX_KEYS && fscanf(f, "%31s %79s %ld", ids[n], keys[n], &limits[n]) == 3) n++;
    if (f) fclose(f);
    return n;
}

/* An error must say what failed: a non-empty message that is not the bare status text. */
static void error_seen(seen_t *s, int rc, const char *what) {
    s->errors++;
    const char *msg = ms_last_error();
    if (rc < 100 || !msg || strlen(msg) < 8) {
        s->silent_errors++;
        fprintf(stderr, "%s: %d with message \"%s\"\n", what, rc, msg ? msg : "(null)");
    } else if (s->errors <= 3) {
        fprintf(stderr, "%s: %d %s\n", what, rc, msg);
    }
}

static int setup(const char *db, const char *dir, int n) {
    ms_store *s;
    if (ms_store_open(db, &s) != MS_OK) return fprintf(stderr, "open: %s\n", ms_last_error()), 1;
    char path[4096], *out;
    if (ms_plan_put(s, "{\"name\":\"faulty\",\"quota\":{\"limit\":50,\"period\":\"daily\"}}", NOW, &out) != MS_OK) return 1;
    ms_string_free(out);
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < n && i < MAX_KEYS; i++) {
        long limit = i % 2 ? 20 : 1000000000;
        char spec[160];
        snprintf(spec, sizeof spec, "{\"quota\":{\"limit\":%ld,\"period\":\"daily\"},\"rate_limit\":null}", limit);
        if (ms_key_create(s, spec, NOW, &out) != MS_OK) return fprintf(stderr, "create: %s\n", ms_last_error()), 1;
        char id[32], key[80];
        if (tu_json_str(out, "id", id, sizeof id) || tu_json_str(out, "key", key, sizeof key)) return 1;
        fprintf(f, "%s %s %ld\n", id, key, limit);
        ms_string_free(out);
    }
    fclose(f);
    ms_store_close(s);
    return 0;
}

static int run(const char *db, const char *dir, int w, long iters, float prob) {
    size_t n = load_keys(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/seen.%d", dir, w);
    seen_t *s = tu_map_new(path, sizeof(seen_t));
    fiu_init(0);
    const char *only = getenv("FAULTS_ONLY"); /* for narrowing down a finding: a substring of the names */
    int enabled[FAILING] = {0};
    for (size_t i = 0; prob > 0 && i < FAILING; i++) {
        if (only && !strstr(failing[i], only)) continue;
        if (fiu_enable_random(failing[i], 1, NULL, 0, prob) != 0) return fprintf(stderr, "cannot enable %s\n", failing[i]), 1;
        enabled[i] = 1;
    }
    ms_store *store = NULL;
    while (ms_store_open_v2(db, "{\"flush_interval_ms\":20}", &store) != MS_OK) {
        error_seen(s, MS_ERR_STORE, "open");
        if (++s->open_failures > 1000) return fprintf(stderr, "cannot open under faults\n"), 1;
    }
    uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(w + 1);
    for (long i = 0; i < iters; i++) {
        tu_xorshift(&rng);
        int64_t now = NOW + i;
        if (i % 40 == 39) {
            char *out = NULL;
            int rc;
            switch ((rng >> 32) % 4) {
            case 0:
                rc = ms_key_create(store, "{\"plan\":\"faulty\"}", now, &out);
                if (rc == MS_OK && s->n_created < MAX_CREATED) tu_json_str(out, "id", s->created[s->n_created++], 32);
                break;
            case 1:
                rc = s->n_created ? ms_key_revoke(store, s->created[rng % s->n_created], now) : MS_OK;
                break;
            case 2:
                rc = ms_plan_put(store, "{\"name\":\"faulty\",\"quota\":{\"limit\":50,\"period\":\"daily\"}}", now, &out);
                break;
            default:
                rc = ms_usage(store, ids[rng % n], now - 86400000, now, &out);
                break;
            }
            ms_string_free(out);
            if (rc == MS_OK) {
                s->admin_ok++;
            } else {
                s->admin_failed++;
                error_seen(s, rc, "admin");
            }
            continue;
        }
        size_t j = (size_t)(rng % n);
        ms_check_result r;
        int rc = ms_store_check(store, keys[j], strlen(keys[j]), now, &r);
        s->checks++;
        if (rc == MS_OK) {
            s->admitted[j]++;
        } else if (rc >= 100) {
            error_seen(s, rc, "check");
        }
    }
    for (size_t i = 0; i < FAILING; i++) {
        if (enabled[i]) fiu_disable(failing[i]); /* libfiu 1.1 crashes disabling a point never enabled */
    }
    ms_store_close(store);
    printf("w=%d checks=%lu errors=%lu silent=%lu admin_ok=%lu admin_failed=%lu open_failures=%lu\n", w,
           (unsigned long)s->checks, (unsigned long)s->errors, (unsigned long)s->silent_errors, (unsigned long)s->admin_ok,
           (unsigned long)s->admin_failed, (unsigned long)s->open_failures);
    return s->silent_errors ? 3 : 0;
}

/* What the processes saw (their DIR/seen.* files): admissions summed per key; every key they created
 * (MS_OK) must be in the store. */
typedef struct {
    ms_store *store;
    size_t n;
    uint64_t admitted[MAX_KEYS];
    long violations, created, errors;
} seen_sum_t;

static void add_seen(const void *map, void *ctx) {
    const seen_t *s = map;
    seen_sum_t *sum = ctx;
    for (size_t i = 0; i < sum->n; i++) sum->admitted[i] += s->admitted[i];
    sum->errors += (long)s->errors;
    for (uint64_t i = 0; i < s->n_created; i++) {
        char *out;
        sum->created++;
        if (ms_key_get(sum->store, s->created[i], &out) != MS_OK) {
            sum->violations++;
            fprintf(stderr, "key %s was created (MS_OK) but is missing\n", s->created[i]);
        } else {
            ms_string_free(out);
        }
    }
}

static int verify(const char *db, const char *dir) {
    static seen_sum_t sum;
    sum.n = load_keys(dir);
    if (ms_store_open(db, &sum.store) != MS_OK) return fprintf(stderr, "reopen after the faults: %s\n", ms_last_error()), 1;
    tu_each_map(dir, "seen.", sizeof(seen_t), add_seen, &sum);
    size_t n = sum.n;
    ms_store *store = sum.store;
    uint64_t *admitted = sum.admitted;
    long violations = sum.violations, created = sum.created, errors = sum.errors;
    uint64_t total_seen = 0, lost = 0;
    /* A counters file deleted under running processes loses what was charged to it since the last flush
     * (the documented flush window): MS_FAULT_MAY_LOSE allows that many counts per key, never more counted. */
    const char *may_lose_env = getenv("MS_FAULT_MAY_LOSE");
    long may_lose = may_lose_env ? atol(may_lose_env) : 0;
    for (size_t i = 0; i < n; i++) {
        char *out;
        if (ms_key_get(store, ids[i], &out) != MS_OK) return fprintf(stderr, "get %s: %s\n", ids[i], ms_last_error()), 1;
        long used = tu_json_num(out, "used"), total = tu_json_num(out, "total");
        ms_string_free(out);
        total_seen += admitted[i];
        if (total < (long)admitted[i]) lost += admitted[i] - (uint64_t)total;
        if (used > limits[i] || admitted[i] > (uint64_t)limits[i] || total > (long)admitted[i] ||
            total < (long)admitted[i] - may_lose) {
            if (violations++ < 10)
                fprintf(stderr, "key %s: limit %ld, admitted %lu, counted %ld (used %ld)\n", ids[i], limits[i],
                        (unsigned long)admitted[i], total, used);
        }
    }
    ms_store_close(store);
    printf("admitted=%lu lost_in_flush_window=%lu created=%ld errors_answered=%ld violations=%ld\n",
           (unsigned long)total_seen, (unsigned long)lost, created, errors, violations);
    return violations ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "setup")) return setup(argv[2], argv[3], atoi(argv[4]));
    if (argc == 7 && !strcmp(argv[1], "run")) return run(argv[2], argv[3], atoi(argv[4]), atol(argv[5]), (float)atof(argv[6]));
    if (argc == 4 && !strcmp(argv[1], "verify")) return verify(argv[2], argv[3]);
    fprintf(stderr, "usage: workload setup DB DIR N | run DB DIR W ITERS PROB | verify DB DIR\n");
    return 2;
}
