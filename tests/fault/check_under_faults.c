/* Checks one key many times while libfiu makes writes, syncs and opens fail at random (run under
 * `fiu-run -x`, which preloads libfiu's POSIX wrappers; this program turns the failures on only around
 * the checks). Every check must answer a decision (0..6), never a library error: a flush turn that
 * cannot write is retried later. Prints "checks=N admitted=A errors=E flush_failures=F". */
#include <fiu-control.h>
#include <fiu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_auth.h"

static const char *const failing[] = {
    "posix/io/rw/write", "posix/io/rw/pwrite",  "posix/io/rw/writev", "posix/io/rw/pwritev",
    "posix/io/sync/fsync", "posix/io/sync/fdatasync", "posix/io/oc/open",
};
#define FAILING (sizeof failing / sizeof failing[0])

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DB KEY CHECKS PROBABILITY\n", argv[0]);
        return 2;
    }
    const char *key = argv[2];
    long checks = atol(argv[3]);
    float probability = (float)atof(argv[4]);
    ms_store *store;
    if (ms_store_open_v2(argv[1], "{\"flush_interval_ms\": 0}", &store) != MS_OK) {
        fprintf(stderr, "open: %s\n", ms_last_error());
        return 1;
    }
    fiu_init(0);
    for (size_t i = 0; i < FAILING; i++) {
        if (fiu_enable_random(failing[i], 1, NULL, 0, probability) != 0) {
            fprintf(stderr, "cannot enable %s\n", failing[i]);
            return 1;
        }
    }
    long admitted = 0, errors = 0;
    int64_t now = 1800000000000;
    for (long i = 0; i < checks; i++) {
        ms_check_result r;
        int rc = ms_store_check(store, key, strlen(key), now + i, &r);
        if (rc >= 100) {
            if (errors++ < 5) {
                fprintf(stderr, "check %ld: %d %s\n", i, rc, ms_last_error());
            }
        } else if (rc == MS_OK) {
            admitted++;
        }
    }
    for (size_t i = 0; i < FAILING; i++) {
        fiu_disable(failing[i]);
    }
    char *metrics = NULL;
    long flush_failures = -1;
    if (ms_metrics_text(store, &metrics) == MS_OK) {
        const char *line = strstr(metrics, "\nms_auth_flush_failures_total ");
        if (line) {
            flush_failures = atol(line + strlen("\nms_auth_flush_failures_total "));
        }
        ms_string_free(metrics);
    } else {
        fprintf(stderr, "metrics: %s\n", ms_last_error());
    }
    ms_store_close(store);
    printf("checks=%ld admitted=%ld errors=%ld flush_failures=%ld\n", checks, admitted, errors, flush_failures);
    return 0;
}
