/* Crash consistency (tests/crash/run.sh kills these at random instants, and simulates reboots):
 *
 *   crash setup  DB DIR              a plan "crash", one key with a quota of LIMIT a day, and one with a
 *                                    quota never reached (exact counts); plaintexts in DIR/keys
 *   crash admin  DB DIR              admin changes back to back until killed: create, revoke, rotate,
 *                                    plan change, key quota change. Each is logged "try" before the call
 *                                    and "done" after MS_OK (one write(2) each, O_APPEND)
 *   crash check  DB DIR W            checks the two keys until killed (W = 0: flush interval 0, a write
 *                                    transaction on nearly every check, so kills land inside flushes);
 *                                    admissions seen go to a shared mapping DIR/seen.W.PID, per 100 ms
 *   crash verify DB DIR FROM TO      after recovery: see verify() below
 *
 * Times are real (Unix ms), so a check's `now` and the flush window share one clock. */
#include "test_util.h"

#define LIMIT 2000
#define SLOTS 36000 /* 100 ms slots: one hour */

typedef struct {
    int64_t t0_ms;
    uint64_t by_slot[2][SLOTS]; /* admissions of key 0 (quota LIMIT) and key 1 (exact), per slot */
} seen_t;

static char keys[2][128], key_ids[2][64];

static void load_keys(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%63s %127s %63s %127s", key_ids[0], keys[0], key_ids[1], keys[1]) != 4) tu_die("keys", 0);
    fclose(f);
}

static int setup(const char *db, const char *dir) {
    ms_store *s = tu_open_store(db, NULL, 6, NULL);
    char *out;
    int rc = ms_plan_put(s, "{\"name\":\"crash\",\"quota\":{\"limit\":1,\"period\":\"daily\"}}", tu_real_ms(), &out);
    if (rc != MS_OK) tu_die("plan", rc);
    ms_string_free(out);
    char path[4096];
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 2; i++) {
        char spec[160];
        snprintf(spec, sizeof spec, "{\"quota\":{\"limit\":%d,\"period\":\"daily\"},\"rate_limit\":null}", i ? 1000000000 : LIMIT);
        if ((rc = ms_key_create(s, spec, tu_real_ms(), &out)) != MS_OK) tu_die("create", rc);
        char id[64], key[128];
        if (tu_json_str(out, "id", id, sizeof id) || tu_json_str(out, "key", key, sizeof key)) tu_die("create answer", 0);
        fprintf(f, "%s %s ", id, key);
        ms_string_free(out);
    }
    fprintf(f, "\n");
    fclose(f);
    ms_store_close(s);
    return 0;
}

static void log_line(int fd, const char *line) {
    size_t len = strlen(line);
    if (write(fd, line, len) != (ssize_t)len) exit(1);
}

/* Ids of keys this admin's earlier incarnations created ("done create"), to revoke and rotate. */
static size_t load_created(const char *dir, char (*ids)[64], size_t cap) {
    char path[4096], line[512], a[32], b[32], id[64];
    snprintf(path, sizeof path, "%s/admin.log", dir);
    FILE *f = fopen(path, "r");
    size_t n = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "%31s %31s %63s", a, b, id) == 3 && !strcmp(a, "done") && (!strcmp(b, "create") || !strcmp(b, "rotate")) && n < cap)
            memcpy(ids[n++], id, 64);
    if (f) fclose(f);
    return n;
}

static int admin(const char *db, const char *dir) {
    char path[4096], line[512];
    snprintf(path, sizeof path, "%s/admin.log", dir);
    int log = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    ms_store *s = tu_open_store(db, NULL, 6, NULL);
    static char ids[100000][64];
    size_t n = load_created(dir, ids, 100000);
    uint64_t rng = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL;
    for (long seq = tu_real_ms() - 1700000000000LL;; seq++) { /* under quota.limit's bound, rising */
        tu_xorshift(&rng);
        char *out = NULL, id[64], key[128];
        int op = (int)((rng >> 33) % 5), rc;
        if (n == 0) op = 0;
        const char *target = n ? ids[rng % n] : "";
        switch (op) {
        case 0: {
            char spec[128];
            snprintf(spec, sizeof spec, "{\"plan\":\"crash\",\"name\":\"c%ld\"}", seq);
            snprintf(line, sizeof line, "try create c%ld\n", seq);
            log_line(log, line);
            if ((rc = ms_key_create(s, spec, tu_real_ms(), &out)) != MS_OK) tu_die("create", rc);
            if (tu_json_str(out, "id", id, sizeof id) || tu_json_str(out, "key", key, sizeof key)) tu_die("create answer", 0);
            snprintf(line, sizeof line, "done create %s %s c%ld\n", id, key, seq);
            memcpy(ids[n < 100000 ? n++ : 0], id, 64);
            break;
        }
        case 1:
            snprintf(line, sizeof line, "try revoke %s\n", target);
            log_line(log, line);
            if ((rc = ms_key_revoke(s, target, tu_real_ms())) != MS_OK) tu_die("revoke", rc);
            snprintf(line, sizeof line, "done revoke %s\n", target);
            break;
        case 2:
            snprintf(line, sizeof line, "try rotate %s\n", target);
            log_line(log, line);
            rc = ms_key_rotate(s, target, "{\"grace_ms\":600000}", tu_real_ms(), &out);
            if (rc == MS_ERR_INVALID_ARGUMENT) { /* revoked or rotated already: refused as documented */
                snprintf(line, sizeof line, "refused rotate %s\n", target);
                break;
            }
            if (rc != MS_OK) tu_die("rotate", rc);
            if (tu_json_str(out, "id", id, sizeof id) || tu_json_str(out, "key", key, sizeof key)) tu_die("rotate answer", 0);
            snprintf(line, sizeof line, "done rotate %s %s %s\n", id, key, target);
            memcpy(ids[n < 100000 ? n++ : 0], id, 64);
            break;
        case 3: {
            char plan[160];
            snprintf(plan, sizeof plan, "{\"name\":\"crash\",\"quota\":{\"limit\":%ld,\"period\":\"daily\"}}", seq);
            snprintf(line, sizeof line, "try plan %ld\n", seq);
            log_line(log, line);
            if ((rc = ms_plan_put(s, plan, tu_real_ms(), &out)) != MS_OK) tu_die("plan", rc);
            snprintf(line, sizeof line, "done plan %ld\n", seq);
            break;
        }
        default: {
            char patch[160];
            snprintf(patch, sizeof patch, "{\"quota\":{\"limit\":%ld,\"period\":\"monthly\"}}", seq);
            snprintf(line, sizeof line, "try quota %s %ld\n", target, seq);
            log_line(log, line);
            rc = ms_key_update(s, target, patch, &out);
            if (rc == MS_ERR_INVALID_ARGUMENT) { /* a rotation partner in force counts daily: refused as documented */
                snprintf(line, sizeof line, "refused quota %s\n", target);
                break;
            }
            if (rc != MS_OK) tu_die("update", rc);
            snprintf(line, sizeof line, "done quota %s %ld\n", target, seq);
            break;
        }
        }
        ms_string_free(out);
        log_line(log, line);
    }
    return 0; /* not reached: killed */
}

static int check(const char *db, const char *dir, int w) {
    load_keys(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/seen.%d.%d", dir, w, (int)getpid());
    seen_t *seen = tu_map_new(path, sizeof(seen_t));
    char t0[64];
    snprintf(path, sizeof path, "%s/t0", dir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(t0, sizeof t0, f)) tu_die("t0", 0);
    fclose(f);
    seen->t0_ms = atoll(t0);
    /* Checker 0 writes counts at nearly every check, so kills land inside flushes; the others every 100 ms. */
    ms_store *s = tu_open_store(db, w == 0 ? "{\"flush_interval_ms\":0}" : "{\"flush_interval_ms\":100}", 6, NULL);
    for (uint64_t i = 0;; i++) {
        int k = (int)(i % 2);
        ms_check_result r;
        int64_t now = tu_real_ms();
        int rc = ms_store_check(s, keys[k], strlen(keys[k]), now, &r);
        if (rc == MS_OK) {
            seen->by_slot[k][(now - seen->t0_ms) / 100 % SLOTS]++;
        } else if (rc >= 100) {
            fprintf(stderr, "crash check: %d %s\n", rc, ms_last_error());
            return 3;
        }
    }
    return 0; /* not reached: killed */
}

/* The admissions of every checking process (their DIR/seen.* files), and those of the loss window. */
typedef struct {
    int64_t loss_from_ms, loss_to_ms;
    uint64_t seen[2], late[2];
} seen_sum_t;

static void add_seen(const void *map, void *ctx) {
    const seen_t *sn = map;
    seen_sum_t *sum = ctx;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < SLOTS; i++) {
            sum->seen[k] += sn->by_slot[k][i];
            /* Loss allowance: slots at or after loss_from_ms (a slot starting 100 ms before counts too). */
            int64_t slot_ms = sn->t0_ms + (int64_t)i * 100;
            if (slot_ms + 100 > sum->loss_from_ms && slot_ms <= sum->loss_to_ms) sum->late[k] += sn->by_slot[k][i];
        }
}

/* After recovery:
 * - every change logged "done" is in the store: created and rotated keys exist (a rotation whole: the new
 *   key names the old, the old names the new), revoked keys are revoked, the plan's quota and each key's
 *   quota are the last done value or the one tried after it (a change killed before it answered may or may
 *   not have committed; nothing else);
 * - every key the admin created answers a check from the counters file as the database says: revoked
 *   ones are refused as revoked, the others are not;
 * - the quota: the key of LIMIT a day was never admitted more than LIMIT times in all (plus, across a
 *   reboot, the admissions whose counts it discarded: they are admitted again), and the exact key's
 *   count equals the admissions seen, less at most those seen from LOSS_FROM_MS to LOSS_TO_MS (the
 *   reboot's flush window: counts not yet in the database when the counters file was discarded). */
static int verify(const char *db, const char *dir, int64_t loss_from_ms, int64_t loss_to_ms) {
    load_keys(dir);
    ms_store *s = tu_open_store(db, NULL, 6, NULL);
    long violations = 0, done = 0;
    char path[4096], line[512], a[32], b[32], c[128], d[128], e[64];
    snprintf(path, sizeof path, "%s/admin.log", dir);
    FILE *f = fopen(path, "r");
    /* Last done and pending tried values of the plan's quota, and the same per key (last one wins). */
    long plan_done = -1, plan_try = -1;
    while (f && fgets(line, sizeof line, f)) {
        int fields = sscanf(line, "%31s %31s %127s %127s %63s", a, b, c, d, e);
        char *out = NULL;
        if (!strcmp(a, "try") && !strcmp(b, "plan")) plan_try = atol(c);
        if (strcmp(a, "done")) continue;
        done++;
        if (!strcmp(b, "plan")) {
            plan_done = atol(c);
        } else if (!strcmp(b, "create") || !strcmp(b, "rotate")) {
            if (ms_key_get(s, c, &out) != MS_OK) {
                if (violations++ < 10) fprintf(stderr, "%s %s done but missing\n", b, c);
                continue;
            }
            char from[64], to[64];
            if (!strcmp(b, "rotate") && fields == 5 &&
                (tu_json_str(out, "rotated_from", from, sizeof from) || strcmp(from, e))) {
                if (violations++ < 10) fprintf(stderr, "rotation %s of %s half-applied: %s\n", c, e, out);
            }
            int revoked = strstr(out, "\"revoked_at_ms\":null") == NULL;
            int64_t revoke_at = tu_json_num(out, "revoke_at_ms");
            ms_string_free(out);
            if (!strcmp(b, "rotate") && fields == 5) {
                if (ms_key_get(s, e, &out) != MS_OK || tu_json_str(out, "rotated_to", to, sizeof to) || strcmp(to, c)) {
                    if (violations++ < 10) fprintf(stderr, "rotation %s: old key %s does not name it: %s\n", c, e, out ? out : "");
                }
                ms_string_free(out);
            }
            ms_check_result r;
            int rc = ms_store_check(s, d, strlen(d), tu_real_ms(), &r);
            (void)revoke_at;
            if (rc >= 100 || (revoked && rc != MS_API_KEY_REVOKED) || (!revoked && rc == MS_API_KEY_REVOKED) ||
                rc == MS_API_KEY_INVALID) {
                if (violations++ < 10) fprintf(stderr, "key %s (revoked: %d) answers %d\n", c, revoked, rc);
            }
        } else if (!strcmp(b, "revoke")) {
            if (ms_key_get(s, c, &out) != MS_OK || strstr(out, "\"revoked_at_ms\":null")) {
                if (violations++ < 10) fprintf(stderr, "revoke %s done but not in the store\n", c);
            }
            ms_string_free(out);
        } else if (!strcmp(b, "quota")) {
            /* The key's quota now: this value, or one tried later (checked against the log's tail below). */
            if (ms_key_get(s, c, &out) == MS_OK) {
                const char *q = strstr(out, "\"quota\":");
                long limit = tu_json_num(q, "limit");
                /* A later quota change of the same key may have committed; find this key's last "try". */
                char path2[4096], line2[512], a2[32], b2[32], c2[128], d2[128];
                long last_done = -1, last_try = -1;
                snprintf(path2, sizeof path2, "%s/admin.log", dir);
                FILE *g = fopen(path2, "r");
                while (g && fgets(line2, sizeof line2, g))
                    if (sscanf(line2, "%31s %31s %127s %127s", a2, b2, c2, d2) == 4 && !strcmp(b2, "quota") && !strcmp(c2, c))
                        *(strcmp(a2, "done") ? &last_try : &last_done) = atol(d2);
                if (g) fclose(g);
                if (limit != last_done && limit != last_try) {
                    if (violations++ < 10) fprintf(stderr, "key %s quota %ld; last done %ld, last tried %ld\n", c, limit, last_done, last_try);
                }
            }
            ms_string_free(out);
        }
    }
    if (f) fclose(f);
    if (plan_done >= 0) {
        long limit = tu_plan_limit(s, "crash");
        if (limit != plan_done && limit != plan_try) {
            violations++;
            fprintf(stderr, "plan quota %ld; last done %ld, last tried %ld\n", limit, plan_done, plan_try);
        }
    }
    /* Counts. */
    seen_sum_t sum = {.loss_from_ms = loss_from_ms, .loss_to_ms = loss_to_ms};
    tu_each_map(dir, "seen.", sizeof(seen_t), add_seen, &sum);
    uint64_t *seen = sum.seen, *late = sum.late;
    long counted[2];
    for (int k = 0; k < 2; k++) {
        char *out;
        if (ms_key_get(s, key_ids[k], &out) != MS_OK) tu_die("get", 0);
        counted[k] = tu_json_num(out, "total");
        ms_string_free(out);
    }
    if (seen[0] > LIMIT + late[0] || counted[0] > LIMIT) {
        violations++;
        fprintf(stderr, "quota key admitted %lu times (counted %ld), limit %d\n", (unsigned long)seen[0], counted[0], LIMIT);
    }
    if ((uint64_t)counted[1] + late[1] < seen[1]) {
        violations++;
        fprintf(stderr, "exact key: %lu admissions seen, %ld counted, %lu allowed lost\n", (unsigned long)seen[1], counted[1], (unsigned long)late[1]);
    }
    ms_store_close(s);
    printf("admin_changes_done=%ld quota_key_admitted=%lu/%d exact_key_seen=%lu counted=%ld allowed_lost=%lu violations=%ld\n", done,
           (unsigned long)seen[0], LIMIT, (unsigned long)seen[1], counted[1], (unsigned long)late[1], violations);
    return violations ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "setup")) return setup(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "admin")) return admin(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "check")) return check(argv[2], argv[3], atoi(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "verify")) return verify(argv[2], argv[3], atoll(argv[4]), atoll(argv[5]));
    fprintf(stderr, "usage: crash setup DB DIR | admin DB DIR | check DB DIR W | verify DB DIR LOSS_FROM_MS LOSS_TO_MS\n");
    return 2;
}
