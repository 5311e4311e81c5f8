/* The check through the C ABI, exactly as nginx and Go call it, against a bare SHA-256 of the key measured
 * in the same run (OpenSSL's low-level SHA256_Init/Update/Final: the one-shot SHA256() of OpenSSL 3 looks
 * the algorithm up on every call). Run it with benches/c/run.sh.
 *
 *   check_bench [ROUNDS [LARGE_KEYS [LARGE_DIR]]]   the table: median ns/check over ROUNDS interleaved rounds
 *   check_bench --only CASE ITERS                   one case ITERS times (for callgrind: run it twice and
 *                                                   subtract, so set-up cancels out)
 *
 * Cases: sha256 (the floor), hot (ms_store_check with a result struct, a key with a quota AND a rate limit,
 * the clock advancing 1 ms per call), unknown (a well-formed key of the generated shape that the store does
 * not hold), badsum (the generated shape with a wrong checksum), badprefix (a 44-byte key whose prefix is
 * neither ms_live_ nor ms_test_: an importable shape, so it is looked up like an unknown key), and with
 * LARGE_KEYS > 0: 1,000 and LARGE_KEYS keys with quota + rate limit, each check on a key drawn uniformly at
 * random (with the SHA-256 of the same random keys, sha256-1k and sha256-large, as their floors), the clock NOW plus
 * the real time since mid-2025. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ms_auth.h"

/* The SQLite inside libms_auth.a (rusqlite's bundled copy), used only to write a large fixture quickly. */
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
int sqlite3_open(const char *, sqlite3 **);
int sqlite3_close(sqlite3 *);
int sqlite3_exec(sqlite3 *, const char *, void *, void *, char **);
int sqlite3_prepare_v2(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
int sqlite3_bind_text(sqlite3_stmt *, int, const char *, int, void (*)(void *));
int sqlite3_bind_blob(sqlite3_stmt *, int, const void *, int, void (*)(void *));
int sqlite3_step(sqlite3_stmt *);
int sqlite3_reset(sqlite3_stmt *);
int sqlite3_finalize(sqlite3_stmt *);
const char *sqlite3_errmsg(sqlite3 *);
#define SQLITE_TRANSIENT ((void (*)(void *)) - 1)

#define NOW 1800000000000LL
#define SPEC                                                                                                   \
    "{\"quota\": {\"limit\": 1000000000000, \"period\": \"daily\"}, \"rate_limit\": {\"limit\": 1000000, "    \
    "\"window_ms\": 1000, \"burst\": 1000000}, \"expires_at_ms\": null}"
#define KEY_LEN 24 /* "bench-key-%012d" plus its NUL, rounded */

static volatile uint64_t sink;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "check_bench: %s: %s\n", what, ms_last_error());
    exit(1);
}

static ms_store *open_store(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/keys.db", dir);
    ms_store *s;
    if (ms_store_open(path, &s) != MS_OK) die("open");
    return s;
}

/* Creates a key with a quota and a rate limit; copies its plaintext into `key` (45 bytes). */
static void create_key(ms_store *s, char *key) {
    char *json;
    if (ms_key_create(s, SPEC, NOW, &json) != MS_OK) die("create");
    const char *k = strstr(json, "\"key\":\"");
    if (!k) die("no key in the record");
    k += 7;
    size_t n = strcspn(k, "\"");
    memcpy(key, k, n);
    key[n] = 0;
    ms_string_free(json);
}

/* ---- the cases: each runs `iters` times on its data ---- */

struct ctx {
    ms_store *store;
    const char *key;
    size_t key_len;
    int64_t t;
    /* the random-access cases */
    const char *keys; /* KEY_LEN bytes each */
    const uint32_t *order;
    size_t order_len, pos;
};

static void run_sha(struct ctx *c, long iters) {
    unsigned char md[32];
    for (long i = 0; i < iters; i++) {
        SHA256_CTX h;
        SHA256_Init(&h);
        SHA256_Update(&h, c->key, c->key_len);
        SHA256_Final(md, &h);
        sink += md[0];
    }
}

static void run_check(struct ctx *c, long iters) {
    ms_check_result r;
    for (long i = 0; i < iters; i++) {
        c->t++;
        int rc = ms_store_check(c->store, c->key, c->key_len, NOW + c->t % 3600000, &r);
        if (rc >= 100) die("check");
        sink += (uint64_t)rc + (uint64_t)r.http_status;
    }
}

/* The next key of the random order. A server checks a key it has just read from the request, so the key's
 * bytes are in cache: the key 16 places ahead is prefetched, or with 1,000,000 keys the bench's own table
 * (24 MB) would add a cache miss per call that no server pays, to the check and to its SHA-256 floor. */
static const char *next_key(struct ctx *c) {
    __builtin_prefetch(c->keys + (size_t)c->order[(c->pos + 16) % c->order_len] * KEY_LEN);
    return c->keys + (size_t)c->order[c->pos++ % c->order_len] * KEY_LEN;
}

static void run_sha_random(struct ctx *c, long iters) {
    unsigned char md[32];
    for (long i = 0; i < iters; i++) {
        const char *k = next_key(c);
        SHA256_CTX h;
        SHA256_Init(&h);
        SHA256_Update(&h, k, 22);
        SHA256_Final(md, &h);
        sink += md[0];
    }
}

/* The large store is kept between runs, so its clock follows the real one (read at the start of each batch,
 * +1 ms every 1,000 calls): a later run never goes back in time against the rate state of an earlier one. */
static void run_check_random(struct ctx *c, long iters) {
    ms_check_result r;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t base = NOW + ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - 1750000000000LL);
    for (long i = 0; i < iters; i++) {
        const char *k = next_key(c);
        int rc = ms_store_check(c->store, k, 22, base + i / 1000, &r);
        if (rc != MS_OK) die("random check");
        sink += (uint64_t)r.http_status;
    }
}

struct bench_case {
    const char *name;
    void (*run)(struct ctx *, long);
    struct ctx c;
    int floor; /* index of the case it is compared with */
    double *samples;
};

/* ---- the large fixture: written straight into the schema in one transaction ---- */

static void key_name(char *out, uint32_t i) { snprintf(out, KEY_LEN, "bench-key-%012u", i); }

static ms_store *large_store(const char *dir, uint32_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/keys.db", dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        ms_store *s = open_store(dir); /* creates the schema */
        ms_store_close(s);
        sqlite3 *db;
        if (sqlite3_open(path, &db) != 0) die("sqlite open");
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        sqlite3_stmt *ins;
        if (sqlite3_prepare_v2(db,
                               "INSERT INTO keys (id, digest, prefix, env, created_at_ms, quota_limit, quota_period, "
                               "rate_limit, rate_window_ms, rate_burst) VALUES (?1, ?2, 'bench', 'live', "
                               "1800000000000, 1000000000000, 'daily', 1000000, 1000, 1000000)",
                               -1, &ins, NULL) != 0) {
            fprintf(stderr, "%s\n", sqlite3_errmsg(db));
            exit(1);
        }
        for (uint32_t i = 0; i < n; i++) {
            char k[KEY_LEN], id[32];
            unsigned char md[32];
            key_name(k, i);
            snprintf(id, sizeof id, "key_bench%u", i);
            SHA256((const unsigned char *)k, 22, md);
            sqlite3_bind_text(ins, 1, id, -1, SQLITE_TRANSIENT);
            sqlite3_bind_blob(ins, 2, md, 32, SQLITE_TRANSIENT);
            if (sqlite3_step(ins) != 101 /* SQLITE_DONE */) {
                fprintf(stderr, "%s\n", sqlite3_errmsg(db));
                exit(1);
            }
            sqlite3_reset(ins);
        }
        sqlite3_finalize(ins);
        sqlite3_exec(db, "UPDATE meta SET value = value + 1 WHERE name = 'generation'", NULL, NULL, NULL);
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != 0) die("commit");
        sqlite3_close(db);
        char counters[4200];
        snprintf(counters, sizeof counters, "%s-counters", path);
        unlink(counters); /* as after an import: the next open builds it for every key at once */
    }
    return open_store(dir);
}

static uint32_t *random_order(uint32_t n, size_t len) {
    uint32_t *o = malloc(len * sizeof *o);
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        o[i] = (uint32_t)(x % n);
    }
    return o;
}

static char *key_table(uint32_t n) {
    char *keys = malloc((size_t)n * KEY_LEN);
    for (uint32_t i = 0; i < n; i++) key_name(keys + (size_t)i * KEY_LEN, i);
    return keys;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *only = NULL;
    long only_iters = 0;
    int rounds = 15;
    uint32_t large = 0;
    const char *large_dir = NULL;
    if (argc > 1 && strcmp(argv[1], "--only") == 0) {
        if (argc < 4) return 2;
        only = argv[2];
        only_iters = atol(argv[3]);
    } else {
        if (argc > 1) rounds = atoi(argv[1]);
        if (argc > 2) large = (uint32_t)atol(argv[2]);
        if (argc > 3) large_dir = argv[3];
    }

    char tmpl[] = "/tmp/ms-auth-cbench-XXXXXX", other_tmpl[] = "/tmp/ms-auth-cbench-XXXXXX";
    const char *dir = mkdtemp(tmpl), *other_dir = mkdtemp(other_tmpl);
    if (!dir || !other_dir) return 1;
    ms_store *store = open_store(dir), *other = open_store(other_dir);
    char hot[64], unknown[64], badsum[64], badprefix[64];
    create_key(store, hot);
    create_key(other, unknown); /* well-formed, with a right checksum, but held by another store */
    strcpy(badsum, hot);
    badsum[43] = badsum[43] == 'a' ? 'b' : 'a';
    strcpy(badprefix, hot);
    badprefix[5] = 'x'; /* "ms_lixe_...": not the generated shape, so an importable key that is looked up */
    ms_check_result r;
    if (ms_store_check(store, hot, strlen(hot), NOW, &r) != MS_OK) die("hot key refused");
    if (ms_store_check(store, unknown, strlen(unknown), NOW, &r) != MS_API_KEY_INVALID) die("unknown key");
    if (ms_store_check(store, badsum, strlen(badsum), NOW, &r) != MS_API_KEY_INVALID) die("bad checksum");
    if (ms_store_check(store, badprefix, strlen(badprefix), NOW, &r) != MS_API_KEY_INVALID) die("bad prefix");

    struct bench_case cases[12];
    int n = 0;
    cases[n++] = (struct bench_case){"sha256", run_sha, {.key = hot, .key_len = strlen(hot)}, 0, NULL};
    cases[n++] = (struct bench_case){"hot", run_check, {store, hot, strlen(hot), 0, 0, 0, 0, 0}, 0, NULL};
    cases[n++] = (struct bench_case){"unknown", run_check, {store, unknown, strlen(unknown), 0, 0, 0, 0, 0}, 0, NULL};
    cases[n++] = (struct bench_case){"badsum", run_check, {store, badsum, strlen(badsum), 0, 0, 0, 0, 0}, 0, NULL};
    cases[n++] =
        (struct bench_case){"badprefix", run_check, {store, badprefix, strlen(badprefix), 0, 0, 0, 0, 0}, 0, NULL};

    const size_t order_len = 1 << 20;
    char large_tmpl[] = "/tmp/ms-auth-cbench-large-XXXXXX", small_tmpl[] = "/tmp/ms-auth-cbench-small-XXXXXX";
    if (large > 0) {
        const char *small_dir = mkdtemp(small_tmpl);
        if (!large_dir) large_dir = mkdtemp(large_tmpl);
        mkdir(large_dir, 0700);
        ms_store *s1k = large_store(small_dir, 1000), *s1m = large_store(large_dir, large);
        char *keys = key_table(large);
        uint32_t *o1k = random_order(1000, order_len), *o1m = random_order(large, order_len);
        int f1k = n;
        cases[n++] = (struct bench_case){"sha256-1k", run_sha_random, {0}, f1k, NULL};
        cases[n - 1].c = (struct ctx){NULL, NULL, 0, 0, keys, o1k, order_len, 0};
        cases[n++] = (struct bench_case){"random-1k", run_check_random, {0}, f1k, NULL};
        cases[n - 1].c = (struct ctx){s1k, NULL, 0, 0, keys, o1k, order_len, 0};
        int flarge = n;
        cases[n++] = (struct bench_case){"sha256-large", run_sha_random, {0}, flarge, NULL};
        cases[n - 1].c = (struct ctx){NULL, NULL, 0, 0, keys, o1m, order_len, 0};
        cases[n++] = (struct bench_case){"random-large", run_check_random, {0}, flarge, NULL};
        cases[n - 1].c = (struct ctx){s1m, NULL, 0, 0, keys, o1m, order_len, 0};
        /* warm: touch every key once so that the first round does not pay for faults */
        cases[n - 1].run(&cases[n - 1].c, (long)order_len);
    }

    int status = 0;
    if (only) {
        status = 2;
        for (int i = 0; i < n; i++)
            if (strcmp(cases[i].name, only) == 0) {
                cases[i].run(&cases[i].c, only_iters);
                status = 0;
            }
        if (status) fprintf(stderr, "no case %s\n", only);
        goto done;
    }

    const long iters = 200000;
    for (int i = 0; i < n; i++) {
        cases[i].samples = calloc((size_t)rounds, sizeof(double));
        cases[i].run(&cases[i].c, iters / 4); /* warm-up */
    }
    for (int round = 0; round < rounds; round++)
        for (int i = 0; i < n; i++) {
            double t0 = now_ns();
            cases[i].run(&cases[i].c, iters);
            cases[i].samples[round] = (now_ns() - t0) / (double)iters;
        }
    double med[12];
    for (int i = 0; i < n; i++) {
        qsort(cases[i].samples, (size_t)rounds, sizeof(double), cmp_double);
        med[i] = cases[i].samples[rounds / 2];
    }
    printf("%-14s %10s %8s   (median of %d interleaved rounds of %ld calls)\n", "case", "ns/check", "ratio", rounds,
           iters);
    for (int i = 0; i < n; i++) {
        printf("%-14s %10.1f %7.2fx", cases[i].name, med[i], med[i] / med[cases[i].floor]);
        if (strcmp(cases[i].name, "random-large") == 0) printf("   %.2fx the 1,000-key check", med[i] / med[n - 3]);
        printf("\n");
    }
done:
    ms_store_close(store);
    ms_store_close(other);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'%s%s%s", dir, other_dir, large > 0 ? " '" : "",
             large > 0 ? small_tmpl : "", large > 0 ? "'" : "");
    if (system(cmd) != 0) fprintf(stderr, "check_bench: could not remove %s\n", dir);
    return status + (int)(sink == 42);
}
