/* Helpers shared by the C programs that drive the library from several processes (tests/crash/crash.c,
 * tests/soak/soak.c, tests/fault/workload.c): the clock, fields of the library's JSON answers, opening a
 * store whose write lock another process may hold, and the shared mappings in which each process records
 * what it saw, so that a verifier can sum them after kill -9. Static inline: each program is one
 * translation unit and uses only a part (no unused-function warnings under -Werror). Needs _GNU_SOURCE
 * (program_invocation_short_name). */
#ifndef MS_AUTH_TEST_UTIL_H
#define MS_AUTH_TEST_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ms_auth.h"

/* Unix ms of the real clock: every process of a run reads the same one. */
static inline int64_t tu_real_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A failed call: what, its status and the library's message, prefixed by the program's name; exit 1. */
static inline void tu_die(const char *what, int rc) {
    fprintf(stderr, "%s: %s: %d %s\n", program_invocation_short_name, what, rc, ms_last_error());
    exit(1);
}

/* xorshift64: fast, and reproducible per seed. */
static inline uint64_t tu_xorshift(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Copies the string value of "field" in a flat JSON record into out (ids and keys have no escapes).
 * -1 if json is NULL, the field is missing or the value does not fit. */
static inline int tu_json_str(const char *json, const char *field, char *out, size_t cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", field);
    const char *p = json ? strstr(json, pat) : NULL;
    if (!p) return -1;
    p += strlen(pat);
    const char *e = strchr(p, '"');
    if (!e || (size_t)(e - p) >= cap) return -1;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = 0;
    return 0;
}

/* The number after the first "field": in json; -1 if json is NULL or the field is missing. */
static inline long tu_json_num(const char *json, const char *field) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", field);
    const char *p = json ? strstr(json, pat) : NULL;
    return p ? atol(p + strlen(pat)) : -1;
}

/* The quota limit of the plan `name` as the store has it now (-1 if the plan has none). */
static inline long tu_plan_limit(ms_store *s, const char *name) {
    char *out, pat[64];
    int rc = ms_plan_list(s, &out);
    if (rc != MS_OK) tu_die("plans", rc);
    snprintf(pat, sizeof pat, "\"%s\"", name);
    long limit = tu_json_num(strstr(out, pat), "limit");
    ms_string_free(out);
    return limit;
}

/* Opens a store, trying `attempts` times: a restarted process can find the write lock held past its busy
 * timeout (a large plan change, a flush of many keys), and retries as a host's supervisor would. Each
 * wait is reported on `waits` when not NULL ("open waited ...", counted by the soak's driver). */
static inline ms_store *tu_open_store(const char *db, const char *options, int attempts, FILE *waits) {
    ms_store *s;
    for (int attempt = 1;; attempt++) {
        int64_t started = tu_real_ms();
        int rc = ms_store_open_v2(db, options, &s);
        if (rc == MS_OK) return s;
        if (waits) {
            fprintf(waits, "open waited %lld ms: %s\n", (long long)(tu_real_ms() - started), ms_last_error());
            fflush(waits);
        }
        if (attempt >= attempts) tu_die("open", rc);
    }
}

/* A new zeroed mapping of `size` bytes shared with the file at path: what the process writes there
 * survives its kill -9 (at most the increment in flight is lost). Exits on failure. */
static inline void *tu_map_new(const char *path, size_t size) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        perror(path);
        exit(1);
    }
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    close(fd);
    return map;
}

/* Calls fn(map, ctx) with each file of dir whose name starts with prefix, mapped read-only. A file
 * shorter than size is passed over: its writer was killed between creating and sizing it, before it
 * recorded anything (reading the mapping past the file's end would be a SIGBUS). */
static inline void tu_each_map(const char *dir, const char *prefix, size_t size, void (*fn)(const void *map, void *ctx),
                               void *ctx) {
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        exit(1);
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix))) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            perror(path);
            exit(1);
        }
        if ((size_t)st.st_size < size) {
            close(fd);
            continue;
        }
        void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (map == MAP_FAILED) {
            perror("mmap");
            exit(1);
        }
        fn(map, ctx);
        munmap(map, size);
    }
    closedir(d);
}

#endif
