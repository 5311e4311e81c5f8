/* The README's C example, compiled and run by the test suite. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ms_auth.h"

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Decides one request; writes the status line and body a server would send. */
static int authenticate(ms_store *store, const char *header_value, char *body, size_t body_len) {
    ms_check_result r;
    int rc = ms_store_check(store, header_value, header_value ? strlen(header_value) : 0, now_ms(), &r);
    if (rc >= 100) { /* a failure of the library, not a decision: fail closed */
        fprintf(stderr, "ms-auth: %s\n", ms_last_error());
        ms_error_json(rc, body, body_len);
        return 503;
    }
    ms_error_json(rc, body, body_len);
    return r.http_status; /* 200, 401 or 429; r.retry_after_ms for Retry-After */
}

int main(int argc, char **argv) {
    ms_store *store;
    if (ms_store_open(argc > 1 ? argv[1] : "ms_auth.db", &store) != MS_OK) {
        fprintf(stderr, "cannot open the store: %s\n", ms_last_error());
        return 1;
    }
    char body[256];
    int http = authenticate(store, argc > 2 ? argv[2] : NULL, body, sizeof body);
    printf("%d %s\n", http, body);
    ms_store_close(store);
    return 0;
}
