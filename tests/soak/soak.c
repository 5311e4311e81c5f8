/* The processes of the soak (scripts/soak.sh), through the C ABI as a host would call it:
 *
 *   soak setup  DB DIR N T0       creates N keys (four kinds, below) and writes DIR/keys: "id key kind limit"
 *   soak worker DB DIR W T0       checks random keys until killed; every admission it sees is counted in
 *                                 DIR/admitted.W.PID, a shared mapping of one u64 per key, so that a kill -9
 *                                 loses at most the one increment in flight (the mapping's pages survive
 *                                 the process; the count of the library survives it in the counters file)
 *   soak admin  DB DIR T0         creates, revokes and rotates churn keys and changes the plan until killed;
 *                                 logs every change to DIR/admin.log *after* the call returned MS_OK
 *   soak verify DB DIR KILLS T0   checks the invariants below; prints the figures; exits 1 on a violation
 *
 * Kinds: 0 a daily quota of 1e9 (never reached: its count must be exact), 1 a daily quota of 1..200 (run
 * out at once: it must admit exactly its limit and never more), 2 a monthly quota of 1e9 and a rate limit
 * of 50/s, 3 on the plan "soak" whose quota the admin keeps changing.
 * Times: T0 (Unix ms of the soak's start, real time) maps to 2027-01-15T01:00:00Z, so that every process
 * sees the same clock and a soak of up to 22 hours stays within one UTC day (one quota period). */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdarg.h>

#include "test_util.h"

#define BASE_MS 1800061200000LL /* 2027-01-15T01:00:00Z */

typedef struct {
    char id[64];
    char key[128];
    int kind;
    long limit;
} key_t_;

static int64_t t0;
static int64_t now_ms(void) { return BASE_MS + (tu_real_ms() - t0); }

static uint64_t rng_state;
static uint64_t rnd(void) { /* xorshift64*: fast, and reproducible per seed */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* An admin call that waited past busy_timeout_ms for the write lock (held by a long flush or plan
 * change of another process) is reported on stdout ("admin waited") and tried again, as an operator
 * would; any other error fails the soak. */
static int busy(int rc) {
    if (rc != MS_ERR_STORE || !strstr(ms_last_error(), "locked")) return 0;
    printf("admin waited: %s\n", ms_last_error());
    fflush(stdout);
    return 1;
}

static key_t_ *load_keys(const char *dir, size_t *n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(1);
    }
    size_t cap = 1024;
    key_t_ *keys = malloc(cap * sizeof *keys);
    *n = 0;
    for (;;) {
        if (*n == cap) keys = realloc(keys, (cap *= 2) * sizeof *keys);
        key_t_ *k = &keys[*n];
        if (fscanf(f, "%63s %127s %d %ld", k->id, k->key, &k->kind, &k->limit) != 4) break;
        (*n)++;
    }
    fclose(f);
    return keys;
}

static int setup(const char *db, const char *dir, long n) {
    ms_store *s = tu_open_store(db, NULL, 5, stdout);
    char *out;
    int rc = ms_plan_put(s, "{\"name\":\"soak\",\"quota\":{\"limit\":1000000000,\"period\":\"daily\"},\"rate_limit\":null}",
                         now_ms(), &out);
    if (rc != MS_OK) tu_die("plan", rc);
    ms_string_free(out);
    char path[4096];
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "w");
    for (long i = 0; i < n; i++) {
        int kind = (int)(i % 4);
        long limit = kind == 1 ? 1 + (long)(rnd() % 200) : 1000000000;
        char spec[256];
        switch (kind) {
        case 0: snprintf(spec, sizeof spec, "{\"quota\":{\"limit\":%ld,\"period\":\"daily\"},\"rate_limit\":null}", limit); break;
        case 1: snprintf(spec, sizeof spec, "{\"quota\":{\"limit\":%ld,\"period\":\"daily\"},\"rate_limit\":null}", limit); break;
        case 2:
            snprintf(spec, sizeof spec,
                     "{\"quota\":{\"limit\":%ld,\"period\":\"monthly\"},\"rate_limit\":{\"limit\":50,\"window_ms\":1000}}", limit);
            break;
        default: snprintf(spec, sizeof spec, "{\"plan\":\"soak\"}"); break;
        }
        rc = ms_key_create(s, spec, now_ms(), &out);
        if (rc != MS_OK) tu_die("create", rc);
        char id[64], key[128];
        if (tu_json_str(out, "id", id, sizeof id) || tu_json_str(out, "key", key, sizeof key)) tu_die("create answer", 0);
        fprintf(f, "%s %s %d %ld\n", id, key, kind, limit);
        ms_string_free(out);
    }
    fclose(f);
    ms_store_close(s);
    return 0;
}

/* The churn keys the admin created (they are revoked and rotated while workers check them). */
static size_t load_churn(const char *dir, char (**keys)[128]) {
    char path[4096];
    snprintf(path, sizeof path, "%s/admin.log", dir);
    FILE *f = fopen(path, "r");
    size_t n = 0, cap = 256;
    *keys = malloc(cap * sizeof **keys);
    if (!f) return 0;
    char line[512], op[32], id[64], key[128];
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%31s %63s %127s", op, id, key) == 3 && (!strcmp(op, "create") || !strcmp(op, "rotate"))) {
            if (n == cap) *keys = realloc(*keys, (cap *= 2) * sizeof **keys);
            memcpy((*keys)[n++], key, 128);
        }
    }
    fclose(f);
    return n;
}

/* The probe's memory every 15 s (DIR/probe.log: seconds, anonymous RSS, heap in use, heap free but kept,
 * mmapped blocks, all KiB), so a rise in RSS shows whether memory is held (a leak, or state that grows
 * with the store) or freed but kept by the allocator. */
static void probe_memory(const char *dir, int64_t started) {
    char path[4096], line[256];
    long rss_kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld", &rss_kb) == 1) break;
    if (f) fclose(f);
    struct mallinfo2 m = mallinfo2();
    snprintf(path, sizeof path, "%s/probe.log", dir);
    FILE *log = fopen(path, "a");
    if (!log) return;
    fprintf(log, "%lld %ld %zu %zu %zu\n", (long long)((tu_real_ms() - started) / 1000), rss_kb, m.uordblks / 1024,
            m.fordblks / 1024, m.hblkhd / 1024);
    fclose(log);
}

static int worker(const char *db, const char *dir, int w) {
    size_t n;
    key_t_ *keys = load_keys(dir, &n);
    char (*churn)[128];
    size_t n_churn = load_churn(dir, &churn);
    char path[4096];
    snprintf(path, sizeof path, "%s/admitted.%d.%d", dir, w, (int)getpid());
    uint64_t *admitted = tu_map_new(path, n * 8);
    /* Flush intervals differ per worker: 100 ms or the default 1 s. (An interval of 0, a write per check,
     * in several processes keeps SQLite's write lock so busy that an opening process can wait past its
     * busy timeout: a configuration for tests, not for load.) */
    static const char *const options[] = {"{\"flush_interval_ms\":100}", NULL};
    ms_store *s = tu_open_store(db, options[w % 2], 5, stdout);
    rng_state = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL + 1;
    uint64_t errors = 0;
    int64_t started = tu_real_ms(), next_probe = started;
    for (uint64_t i = 0;; i++) {
        if (w == 0 && i % 65536 == 0 && tu_real_ms() >= next_probe) {
            probe_memory(dir, started);
            next_probe += 15000;
        }
        ms_check_result r;
        int rc;
        if (n_churn && i % 16 == 0) {
            const char *k = churn[rnd() % n_churn];
            rc = ms_store_check(s, k, strlen(k), now_ms(), &r);
        } else {
            size_t j = (size_t)(rnd() % n);
            rc = ms_store_check(s, keys[j].key, strlen(keys[j].key), now_ms(), &r);
            if (rc == MS_OK) admitted[j]++;
        }
        if (rc >= 100) {
            /* A check must always decide; report the error and stop so the driver counts it. */
            fprintf(stderr, "soak worker %d: check: %d %s\n", w, rc, ms_last_error());
            if (++errors > 10) return 3;
        }
    }
}

static void logf_(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(int fd, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(fd, buf, (size_t)len) != len) exit(1); /* O_APPEND: one write, one whole line */
}

static int admin(const char *db, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/admin.log", dir);
    int log = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    ms_store *s = tu_open_store(db, NULL, 5, stdout);
    rng_state = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL + 7;
    char (*churn)[128];
    size_t n_churn = load_churn(dir, &churn);
    /* Ids of the churn keys, in the log's order: what revoke and rotate pick from. */
    char (*ids)[64] = malloc(1u << 20);
    size_t n_ids = 0, cap_ids = (1u << 20) / 64;
    {
        FILE *f = fopen(path, "r");
        char line[512], op[32], id[64], key[128];
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "%31s %63s %127s", op, id, key) == 3 && (!strcmp(op, "create") || !strcmp(op, "rotate")) &&
                n_ids < cap_ids)
                memcpy(ids[n_ids++], id, 64);
        if (f) fclose(f);
    }
    (void)n_churn;
    for (;;) {
        /* About 50 changes a second. Unthrottled, the admin's back-to-back write transactions starve an
         * opening process's busy wait (SQLite's lock is not fair) past busy_timeout_ms. */
        usleep(20000);
        char *out = NULL;
        int rc;
        uint64_t op = rnd() % 100;
        if (op < 60 || n_ids == 0) {
            /* Bursts of creates grow the counters file past its room. */
            rc = ms_key_create(s, op < 30 ? "{\"plan\":\"soak\"}" : "{\"quota\":{\"limit\":100,\"period\":\"daily\"}}", now_ms(), &out);
            if (busy(rc)) continue;
            if (rc != MS_OK) tu_die("admin create", rc);
            char id[64], key[128];
            if (tu_json_str(out, "id", id, sizeof id) || tu_json_str(out, "key", key, sizeof key)) tu_die("create answer", 0);
            logf_(log, "create %s %s\n", id, key);
            if (n_ids < cap_ids) memcpy(ids[n_ids++], id, 64);
        } else if (op < 75) {
            const char *id = ids[rnd() % n_ids];
            rc = ms_key_revoke(s, id, now_ms());
            if (busy(rc)) continue;
            if (rc != MS_OK) tu_die("admin revoke", rc);
            logf_(log, "revoke %s\n", id);
        } else if (op < 85) {
            const char *id = ids[rnd() % n_ids];
            rc = ms_key_rotate(s, id, "{\"grace_ms\":2000}", now_ms(), &out);
            if (rc == MS_ERR_INVALID_ARGUMENT) continue; /* revoked or already rotated: refused, as documented */
            if (busy(rc)) continue;
            if (rc != MS_OK) tu_die("admin rotate", rc);
            char new_id[64], key[128];
            if (tu_json_str(out, "id", new_id, sizeof new_id) || tu_json_str(out, "key", key, sizeof key)) tu_die("rotate answer", 0);
            logf_(log, "rotate %s %s %s\n", new_id, key, id);
            if (n_ids < cap_ids) memcpy(ids[n_ids++], new_id, 64);
        } else if (op < 95) {
            /* The plan's quota, logged before and after: the final limit is the last done or the one after. */
            long limit = 1000000000 - (long)(rnd() % 1000);
            char plan[256];
            snprintf(plan, sizeof plan, "{\"name\":\"soak\",\"quota\":{\"limit\":%ld,\"period\":\"daily\"},\"rate_limit\":null}", limit);
            logf_(log, "plan-try %ld\n", limit);
            rc = ms_plan_put(s, plan, now_ms(), &out);
            if (busy(rc)) continue;
            if (rc != MS_OK) tu_die("admin plan", rc);
            logf_(log, "plan %ld\n", limit);
        } else {
            /* Reading usage writes every pending count first: an explicit flush. */
            const char *id = ids[rnd() % n_ids];
            rc = ms_usage(s, id, now_ms() - 86400000, now_ms(), &out);
            if (busy(rc)) continue;
            if (rc != MS_OK) tu_die("admin usage", rc);
        }
        ms_string_free(out);
    }
    return 0; /* not reached: the driver kills the admin */
}

/* The admissions every worker saw (DIR/admitted.*), summed per key. */
typedef struct {
    size_t n;
    uint64_t *sum;
} admitted_sum_t;

static void add_admitted(const void *map, void *ctx) {
    const uint64_t *admitted = map;
    admitted_sum_t *a = ctx;
    for (size_t i = 0; i < a->n; i++) a->sum[i] += admitted[i];
}

static uint64_t *sum_admitted(const char *dir, size_t n) {
    admitted_sum_t a = {n, calloc(n, 8)};
    tu_each_map(dir, "admitted.", n * 8, add_admitted, &a);
    return a.sum;
}

static int verify(const char *db, const char *dir, long kills) {
    size_t n;
    key_t_ *keys = load_keys(dir, &n);
    uint64_t *seen = sum_admitted(dir, n);
    ms_store *s = tu_open_store(db, NULL, 5, stdout);
    long violations = 0;
    uint64_t total_seen = 0, total_counted = 0, slack = 0, exhausted = 0;
    for (size_t i = 0; i < n; i++) {
        char *out;
        int rc = ms_key_get(s, keys[i].id, &out);
        if (rc != MS_OK) tu_die("get", rc);
        long used = tu_json_num(out, "used"), total = tu_json_num(out, "total");
        ms_string_free(out);
        total_seen += seen[i];
        total_counted += (uint64_t)total;
        if ((uint64_t)total < seen[i]) {
            if (violations++ < 10) fprintf(stderr, "key %s: %lu admissions seen, %ld counted (a count was lost)\n", keys[i].id, (unsigned long)seen[i], total);
        }
        slack += (uint64_t)total - seen[i];
        if (keys[i].kind != 3 && used > keys[i].limit) {
            if (violations++ < 10) fprintf(stderr, "key %s: used %ld > limit %ld\n", keys[i].id, used, keys[i].limit);
        }
        if (keys[i].kind == 1 && used == keys[i].limit) exhausted++;
    }
    /* Each kill -9 of a worker can lose the increment of one admission it had not yet recorded. */
    if ((long)slack > kills) {
        violations++;
        fprintf(stderr, "%lu counts more than the admissions seen, with %ld kills\n", (unsigned long)slack, kills);
    }
    /* Every change the admin logged (after MS_OK) is in the store. */
    char path[4096];
    snprintf(path, sizeof path, "%s/admin.log", dir);
    FILE *f = fopen(path, "r");
    char line[512], op[32], a[64], b[128], c[64];
    long creates = 0, revokes = 0, rotates = 0, plans = 0, last_plan = -1, next_plan = -1;
    while (f && fgets(line, sizeof line, f)) {
        int fields = sscanf(line, "%31s %63s %127s %63s", op, a, b, c);
        char *out = NULL;
        if (!strcmp(op, "create") || !strcmp(op, "rotate")) {
            int rc = ms_key_get(s, a, &out);
            if (rc != MS_OK) {
                if (violations++ < 10) fprintf(stderr, "%s %s committed but missing: %d %s\n", op, a, rc, ms_last_error());
                continue;
            }
            if (!strcmp(op, "rotate") && fields == 4) {
                char from[64];
                if (tu_json_str(out, "rotated_from", from, sizeof from) || strcmp(from, c)) {
                    if (violations++ < 10) fprintf(stderr, "rotation %s of %s is half-applied: %s\n", a, c, out);
                }
                rotates++;
            } else {
                creates++;
            }
            /* The new key must be checkable by its plaintext (the counters file has it). */
            ms_check_result r;
            rc = ms_store_check(s, b, strlen(b), now_ms(), &r);
            if (rc >= 100) {
                if (violations++ < 10) fprintf(stderr, "key %s: check %d\n", a, rc);
            }
        } else if (!strcmp(op, "revoke")) {
            revokes++;
            if (ms_key_get(s, a, &out) != MS_OK || !strstr(out, "\"revoked_at_ms\":1")) {
                if (violations++ < 10) fprintf(stderr, "revoke %s committed but not in the store\n", a);
            }
        } else if (!strcmp(op, "plan-try")) {
            next_plan = atol(a);
        } else if (!strcmp(op, "plan")) {
            plans++;
            last_plan = atol(a);
        }
        ms_string_free(out);
    }
    if (f) fclose(f);
    if (last_plan >= 0) {
        long limit = tu_plan_limit(s, "soak");
        if (limit != last_plan && limit != next_plan) {
            violations++;
            fprintf(stderr, "plan soak has quota %ld; last committed %ld (next tried %ld)\n", limit, last_plan, next_plan);
        }
    }
    ms_store_close(s);
    printf("keys=%zu admissions_seen=%lu counted=%lu unrecorded_by_kills=%lu small_quotas_exhausted=%lu/%zu "
           "admin_creates=%ld revokes=%ld rotations=%ld plan_changes=%ld violations=%ld\n",
           n, (unsigned long)total_seen, (unsigned long)total_counted, (unsigned long)slack, (unsigned long)exhausted,
           n / 4, creates, revokes, rotates, plans, violations);
    return violations ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "setup")) {
        t0 = atoll(argv[5]);
        rng_state = 42;
        return setup(argv[2], argv[3], atol(argv[4]));
    }
    if (argc == 6 && !strcmp(argv[1], "worker")) {
        t0 = atoll(argv[5]);
        return worker(argv[2], argv[3], atoi(argv[4]));
    }
    if (argc == 5 && !strcmp(argv[1], "admin")) {
        t0 = atoll(argv[4]);
        return admin(argv[2], argv[3]);
    }
    if (argc == 6 && !strcmp(argv[1], "verify")) {
        t0 = atoll(argv[5]);
        return verify(argv[2], argv[3], atol(argv[4]));
    }
    fprintf(stderr, "usage: soak setup DB DIR N T0 | worker DB DIR W T0 | admin DB DIR T0 | verify DB DIR KILLS T0\n");
    return 2;
}
