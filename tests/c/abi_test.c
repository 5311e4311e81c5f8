/* The C ABI v1 exercised from C against the committed header: every documented answer, argument checks,
 * ownership, snprintf-like bodies, and many threads sharing one handle. Compiled with
 * -Wall -Wextra -Werror -pedantic, linked to libms_auth.a and to libms_auth.so, and run under ASan. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ms_auth.h"

static int failures = 0;
static int passes = 0;

#define EXPECT(cond)                                                                  \
    do {                                                                              \
        if (cond) {                                                                   \
            passes++;                                                                 \
        } else {                                                                      \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: FAILED: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, ms_last_error());                                          \
        }                                                                             \
    } while (0)

static const int64_t NOW = 1800000000000LL; /* 2027-01-15T08:00:00Z */

/* Pulls the value of "field":"..." out of a JSON answer (enough for the flat strings we read). */
static void json_string(const char *json, const char *field, char *out, size_t out_len) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", field);
    const char *at = strstr(json, pattern);
    out[0] = '\0';
    if (at == NULL) return;
    at += strlen(pattern);
    size_t n = strcspn(at, "\"");
    if (n >= out_len) n = out_len - 1;
    memcpy(out, at, n);
    out[n] = '\0';
}

static void create(ms_store *store, const char *spec, char *key, char *id) {
    char *json = NULL;
    int rc = ms_key_create(store, spec, NOW, &json);
    EXPECT(rc == MS_OK);
    if (rc != MS_OK) exit(1);
    json_string(json, "key", key, 600);
    json_string(json, "id", id, 48);
    ms_string_free(json);
}

static int check(ms_store *store, const char *key, ms_check_result *out) {
    return ms_store_check(store, key, key ? strlen(key) : 0, NOW, out);
}

struct race {
    ms_store *store;
    const char *key;
    int admitted;
};

static void *race_thread(void *arg) {
    struct race *r = arg;
    for (int i = 0; i < 400; i++) {
        if (ms_store_check(r->store, r->key, strlen(r->key), NOW, NULL) == MS_OK) r->admitted++;
    }
    return NULL;
}

int main(void) {
    char path[] = "/tmp/ms_auth_c_test_XXXXXX";
    EXPECT(mkdtemp(path) != NULL);
    char db[128];
    snprintf(db, sizeof db, "%s/keys.db", path);

    ms_store *store = NULL;
    EXPECT(ms_store_open(db, &store) == MS_OK && store != NULL);

    char ok_key[600], ok_id[48], expired_key[600], expired_id[48], revoked_key[600], revoked_id[48];
    char quota_key[600], quota_id[48], rate_key[600], rate_id[48];
    create(store, "{\"plan\":\"pro\",\"name\":\"c-test\"}", ok_key, ok_id);
    create(store, "{\"expires_at_ms\":1800000000000}", expired_key, expired_id);
    create(store, "{}", revoked_key, revoked_id);
    create(store, "{\"quota\":{\"limit\":1,\"period\":\"monthly\"}}", quota_key, quota_id);
    create(store, "{\"rate_limit\":{\"limit\":1,\"window_ms\":2000}}", rate_key, rate_id);
    EXPECT(strncmp(ok_key, "ms_live_", 8) == 0 && strlen(ok_key) == 44);
    EXPECT(ms_key_revoke(store, revoked_id, NOW) == MS_OK);

    ms_check_result r;
    memset(&r, 0, sizeof r);
    EXPECT(check(store, ok_key, &r) == MS_OK);
    EXPECT(r.status == MS_OK && r.http_status == 200 && r.retry_after_ms == 0);
    EXPECT(strcmp(r.key_id, ok_id) == 0 && strcmp(r.plan, "pro") == 0);
    EXPECT(r.quota_limit == -1 && r.quota_remaining == -1 && r.quota_reset_ms == 0);
    EXPECT(r.rate_limit == 60 && r.rate_remaining == 59);

    EXPECT(check(store, NULL, &r) == MS_API_KEY_MISSING && r.http_status == 401 && r.key_id[0] == '\0');
    EXPECT(check(store, " \t ", &r) == MS_API_KEY_MISSING);
    EXPECT(check(store, "ms_live_doesnotexist", &r) == MS_API_KEY_INVALID && r.http_status == 401);
    EXPECT(check(store, "two words", &r) == MS_API_KEY_INVALID);
    EXPECT(check(store, expired_key, &r) == MS_API_KEY_EXPIRED && r.http_status == 401);
    EXPECT(check(store, revoked_key, &r) == MS_API_KEY_REVOKED && r.http_status == 401);
    EXPECT(check(store, quota_key, &r) == MS_OK && r.quota_limit == 1 && r.quota_remaining == 0);
    EXPECT(check(store, quota_key, &r) == MS_API_KEY_QUOTA_EXCEEDED && r.http_status == 429);
    EXPECT(r.retry_after_ms == r.quota_reset_ms - NOW && r.retry_after_ms > 0);
    EXPECT(check(store, rate_key, &r) == MS_OK);
    EXPECT(check(store, rate_key, &r) == MS_RATE_LIMIT_EXCEEDED && r.retry_after_ms == 2000);

    /* The answer's fields, built by the library for every host. */
    char fields[MS_HTTP_FIELDS_MAX];
    size_t needed = 0;
    EXPECT(ms_store_check_http(store, rate_key, strlen(rate_key), NOW, &r, fields, sizeof fields, &needed)
           == MS_RATE_LIMIT_EXCEEDED);
    EXPECT(strcmp(fields, "Retry-After: 2\r\nRateLimit-Policy: \"rate\";q=1;w=2\r\n"
                          "RateLimit: \"rate\";r=0;t=2\r\n") == 0);
    EXPECT(needed == strlen(fields) && r.status == MS_RATE_LIMIT_EXCEEDED);
    EXPECT(ms_store_check_http(store, NULL, 0, NOW, NULL, fields, sizeof fields, NULL) == MS_API_KEY_MISSING);
    EXPECT(fields[0] == '\0');

    /* A key longer than 512 bytes is invalid, a huge one does not crash. */
    char *huge = malloc(100001);
    memset(huge, 'a', 100000);
    huge[100000] = '\0';
    EXPECT(check(store, huge, &r) == MS_API_KEY_INVALID);
    free(huge);

    /* Library errors: never MS_OK, always explained, outputs untouched. */
    char *json = (char *)0x1;
    EXPECT(ms_key_create(store, "{\"quota\":{\"limit\":-3,\"period\":\"daily\"}}", NOW, &json) == MS_ERR_INVALID_ARGUMENT);
    EXPECT(json == (char *)0x1);
    EXPECT(strstr(ms_last_error(), "quota.limit") != NULL);
    EXPECT(ms_key_get(store, "key_nope", &json) == MS_ERR_NOT_FOUND && strstr(ms_last_error(), "key_nope"));
    EXPECT(ms_store_check(NULL, ok_key, strlen(ok_key), NOW, &r) == MS_ERR_INVALID_ARGUMENT);
    EXPECT(ms_store_check(store, ok_key, strlen(ok_key), 1800000000, &r) == MS_ERR_INVALID_ARGUMENT);
    EXPECT(strstr(ms_last_error(), "seconds") != NULL);
    ms_store *none = (ms_store *)0x1;
    EXPECT(ms_store_open("/nonexistent/dir/keys.db", &none) == MS_ERR_STORE && none == (ms_store *)0x1);
    EXPECT(strstr(ms_last_error(), "store_unavailable") == ms_last_error());

    /* Admin JSON round trips. */
    json = NULL;
    EXPECT(ms_key_update(store, ok_id, "{\"plan\":\"enterprise\"}", &json) == MS_OK);
    EXPECT(json != NULL && strstr(json, "\"plan\":\"enterprise\"") != NULL);
    ms_string_free(json);
    json = NULL;
    EXPECT(ms_key_list(store, "{\"plan\":\"enterprise\"}", &json) == MS_OK);
    EXPECT(json != NULL && strncmp(json, "{\"keys\":[{\"id\":\"", 15) == 0 && strstr(json, ok_id) != NULL);
    ms_string_free(json);
    json = NULL;
    EXPECT(ms_key_get(store, revoked_id, &json) == MS_OK && strstr(json, "\"revoked_reason\":\"manual\""));
    EXPECT(strstr(json, "\"key\":") == NULL); /* the plaintext is never shown again */
    ms_string_free(json);

    /* Status descriptions and bodies. */
    EXPECT(strcmp(ms_status_code(MS_API_KEY_QUOTA_EXCEEDED), "api_key_quota_exceeded") == 0);
    EXPECT(strcmp(ms_status_message(MS_RATE_LIMIT_EXCEEDED), "Too many requests. Please try again later.") == 0);
    EXPECT(ms_status_http(MS_API_KEY_REVOKED) == 401 && ms_status_http(MS_ERR_STORE) == 503);
    EXPECT(strcmp(ms_status_code(42), "unknown") == 0);
    const char *expected = "{\"success\":false,\"error\":{\"code\":\"api_key_expired\",\"message\":\"API key has expired.\",\"httpStatus\":401}}";
    char body[256];
    EXPECT(ms_error_json(MS_API_KEY_EXPIRED, body, sizeof body) == strlen(expected));
    EXPECT(strcmp(body, expected) == 0);
    size_t need = ms_error_json(MS_RATE_LIMIT_EXCEEDED, NULL, 0);
    char *exact = malloc(need + 1);
    EXPECT(ms_error_json(MS_RATE_LIMIT_EXCEEDED, exact, need + 1) == need && strlen(exact) == need);
    free(exact);
    char tiny[4];
    EXPECT(ms_error_json(MS_API_KEY_MISSING, tiny, sizeof tiny) > sizeof tiny && strcmp(tiny, "{\"s") == 0);
    EXPECT(strcmp(ms_version(), "1.1.0") == 0 && ms_abi_version() == MS_ABI_VERSION);

    /* Eight threads on one handle: exactly the quota is admitted. */
    char race_key[600], race_id[48];
    create(store, "{\"quota\":{\"limit\":1000,\"period\":\"daily\"},\"rate_limit\":null}", race_key, race_id);
    pthread_t threads[8];
    struct race races[8];
    for (int i = 0; i < 8; i++) {
        races[i] = (struct race){store, race_key, 0};
        pthread_create(&threads[i], NULL, race_thread, &races[i]);
    }
    int admitted = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(threads[i], NULL);
        admitted += races[i].admitted;
    }
    EXPECT(admitted == 1000);

    /* Lifecycle additions: a plan, a rotation that keeps the quota, metrics text. */
    json = NULL;
    EXPECT(ms_store_set_actor(store, "c-test") == MS_OK);
    EXPECT(ms_plan_put(store, "{\"name\":\"gold\",\"quota\":{\"limit\":2,\"period\":\"daily\"}}", NOW, &json) == MS_OK);
    EXPECT(json != NULL && strstr(json, "\"name\":\"gold\"") != NULL);
    ms_string_free(json);
    char gold_key[600], gold_id[48], next_key[600], next_id[48];
    create(store, "{\"plan\":\"gold\"}", gold_key, gold_id);
    EXPECT(check(store, gold_key, &r) == MS_OK && r.quota_limit == 2 && r.quota_remaining == 1);
    json = NULL;
    EXPECT(ms_key_rotate(store, gold_id, "{\"grace_ms\":0}", NOW, &json) == MS_OK);
    json_string(json, "key", next_key, sizeof next_key);
    json_string(json, "id", next_id, sizeof next_id);
    ms_string_free(json);
    EXPECT(check(store, gold_key, &r) == MS_API_KEY_REVOKED);
    EXPECT(check(store, next_key, &r) == MS_OK && r.quota_remaining == 0);
    EXPECT(check(store, next_key, &r) == MS_API_KEY_QUOTA_EXCEEDED);
    json = NULL;
    EXPECT(ms_metrics_text(store, &json) == MS_OK && strstr(json, "ms_auth_keys{state=") != NULL);
    ms_string_free(json);
    json = NULL;
    EXPECT(ms_audit(store, NULL, &json) == MS_OK && strstr(json, "\"actor\":\"c-test\"") != NULL);
    ms_string_free(json);
    ms_store_close(store);

    /* The process-wide store, and counts that survive close and reopen. */
    EXPECT(ms_auth_check(ok_key, NOW) == MS_ERR_NOT_OPEN);
    EXPECT(ms_open(db) == MS_OK);
    EXPECT(ms_auth_check(quota_key, NOW) == MS_API_KEY_QUOTA_EXCEEDED);
    EXPECT(ms_auth_check(race_key, NOW) == MS_API_KEY_QUOTA_EXCEEDED);
    EXPECT(ms_auth_check(ok_key, NOW) == MS_OK);
    EXPECT(ms_auth_check(NULL, NOW) == MS_API_KEY_MISSING);
    ms_close();
    ms_close();
    ms_store_close(NULL);
    ms_string_free(NULL);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    EXPECT(system(cmd) == 0);
    printf("%d passed, %d failed\n", passes, failures);
    return failures == 0 ? 0 : 1;
}
