/*
 * ngx_http_ms_auth_module: enforces the ms-auth API-key policy (key,
 * expiry, revocation, quota, rate limit) inside nginx worker processes,
 * over the C ABI of libms_auth (linked statically).
 *
 * Directives:
 *   ms_auth_store PATH;           http
 *   ms_auth on|off;               http, server, location  (default off)
 *   ms_auth_header NAME;          http, server, location  (default X-API-Key)
 *   ms_auth_failure closed|open;  http, server, location  (default closed)
 *
 * Variables: $ms_auth_key_id, $ms_auth_plan, $ms_auth_status,
 *            $ms_auth_ratelimit, $ms_auth_ratelimit_policy.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/wait.h>
#include <pwd.h>
#include <grp.h>

#include "ms_auth.h"


#define NGX_HTTP_MS_AUTH_FAIL_CLOSED  0
#define NGX_HTTP_MS_AUTH_FAIL_OPEN    1

/* A worker whose store could not be opened tries again at most this often. */
#define NGX_HTTP_MS_AUTH_REOPEN_MS    1000


typedef struct {
    ngx_str_t                  store;       /* absolute path; len 0: unset */
    ngx_str_t                  store_file;  /* where it was set (messages) */
    ngx_uint_t                 store_line;
    ngx_str_t                  on_file;     /* first "ms_auth on" (messages) */
    ngx_uint_t                 on_line;
} ngx_http_ms_auth_main_conf_t;


typedef struct {
    ngx_flag_t                 enable;
    ngx_str_t                  header;        /* as configured */
    ngx_uint_t                 failure;
} ngx_http_ms_auth_loc_conf_t;


/*
 * The decision for one client request. It lives in the main request's pool
 * and is found again after an internal redirect (which clears r->ctx) through
 * the pool cleanup list, so a request is charged once, however often it is
 * redirected, and the variables still work in the log phase.
 */
typedef struct {
    int32_t                    status;
    ngx_uint_t                 admitted;      /* 1: request went on */
    ms_check_result            res;
    int64_t                    now_ms;
    /* the answer's Retry-After / RateLimit fields, from the library */
    size_t                     fields_len;
    char                       fields[MS_HTTP_FIELDS_MAX];
} ngx_http_ms_auth_ctx_t;


static ngx_int_t ngx_http_ms_auth_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_ms_auth_reject(ngx_http_request_t *r,
    ngx_http_ms_auth_ctx_t *ctx);
static ngx_int_t ngx_http_ms_auth_add_fields(ngx_http_request_t *r,
    ngx_http_ms_auth_ctx_t *ctx);
static ngx_http_ms_auth_ctx_t *ngx_http_ms_auth_get_ctx(ngx_http_request_t *r);
static void ngx_http_ms_auth_ctx_cleanup(void *data);
static ngx_int_t ngx_http_ms_auth_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_ms_auth_init(ngx_conf_t *cf);
static void *ngx_http_ms_auth_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_ms_auth_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_ms_auth_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_ms_auth_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_ms_auth_store(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ms_auth_enable(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ms_auth_header(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ms_auth_failure(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ms_auth_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_ms_auth_init_process(ngx_cycle_t *cycle);
static void ngx_http_ms_auth_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_ms_auth_commands[] = {

    { ngx_string("ms_auth_store"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_ms_auth_store,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ms_auth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_http_ms_auth_enable,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ms_auth_loc_conf_t, enable),
      NULL },

    { ngx_string("ms_auth_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ms_auth_header,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ms_auth_failure"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ms_auth_failure,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ms_auth_module_ctx = {
    ngx_http_ms_auth_add_variables,         /* preconfiguration */
    ngx_http_ms_auth_init,                  /* postconfiguration */

    ngx_http_ms_auth_create_main_conf,      /* create main configuration */
    ngx_http_ms_auth_init_main_conf,        /* init main configuration */

    NULL,                                   /* create server configuration */
    NULL,                                   /* merge server configuration */

    ngx_http_ms_auth_create_loc_conf,       /* create location configuration */
    ngx_http_ms_auth_merge_loc_conf         /* merge location configuration */
};


ngx_module_t  ngx_http_ms_auth_module = {
    NGX_MODULE_V1,
    &ngx_http_ms_auth_module_ctx,           /* module context */
    ngx_http_ms_auth_commands,              /* module directives */
    NGX_HTTP_MODULE,                        /* module type */
    NULL,                                   /* init master */
    ngx_http_ms_auth_init_module,           /* init module */
    ngx_http_ms_auth_init_process,          /* init process */
    NULL,                                   /* init thread */
    NULL,                                   /* exit thread */
    ngx_http_ms_auth_exit_process,          /* exit process */
    NULL,                                   /* exit master */
    NGX_MODULE_V1_PADDING
};


/* Per worker: the store handle, opened after fork in init_process. */
static ms_store    *ngx_http_ms_auth_handle;
static int32_t      ngx_http_ms_auth_open_status = MS_ERR_NOT_OPEN;
static ngx_msec_t   ngx_http_ms_auth_open_tried;
static u_char      *ngx_http_ms_auth_path;        /* NUL-terminated */


static ngx_str_t  ngx_http_ms_auth_json = ngx_string("application/json");


/* ---------------------------------------------------------------- request */

static int64_t
ngx_http_ms_auth_now_ms(void)
{
    ngx_time_t  *tp;

    /* nginx's cached clock, refreshed on every event loop iteration */
    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + (int64_t) tp->msec;
}


static ms_store *
ngx_http_ms_auth_store_handle(ngx_log_t *log)
{
    ngx_msec_t  now;

    if (ngx_http_ms_auth_handle != NULL || ngx_http_ms_auth_path == NULL) {
        return ngx_http_ms_auth_handle;
    }

    /* The open at worker start failed: retry, but not on every request. */
    now = ngx_current_msec;

    if (ngx_http_ms_auth_open_tried != 0
        && now - ngx_http_ms_auth_open_tried < NGX_HTTP_MS_AUTH_REOPEN_MS)
    {
        return NULL;
    }

    ngx_http_ms_auth_open_tried = now ? now : 1;

    ngx_http_ms_auth_open_status =
        ms_store_open((const char *) ngx_http_ms_auth_path,
                      &ngx_http_ms_auth_handle);

    if (ngx_http_ms_auth_open_status != MS_OK) {
        ngx_http_ms_auth_handle = NULL;
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ms_auth: cannot open store \"%s\": %s",
                      ngx_http_ms_auth_path, ms_last_error());
        return NULL;
    }

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "ms_auth: store \"%s\" opened", ngx_http_ms_auth_path);

    return ngx_http_ms_auth_handle;
}


/*
 * Header names compared without case and with "-" and "_" alike: nginx names
 * headers that way in $http_* variables and in FastCGI, uwsgi and SCGI params
 * (HTTP_X_API_KEY for both X-API-Key and X_API_KEY, with
 * underscores_in_headers on), so both spellings are the key header.
 */
static ngx_uint_t
ngx_http_ms_auth_same_header(ngx_str_t *a, ngx_str_t *b)
{
    u_char      ca, cb;
    ngx_uint_t  i;

    if (a->len != b->len) {
        return 0;
    }

    for (i = 0; i < a->len; i++) {
        ca = ngx_tolower(a->data[i]);
        cb = ngx_tolower(b->data[i]);

        if (ca == '_') {
            ca = '-';
        }

        if (cb == '_') {
            cb = '-';
        }

        if (ca != cb) {
            return 0;
        }
    }

    return 1;
}


/*
 * Finds the key header: NGX_OK with *found set (NULL: none), or NGX_DECLINED
 * when it comes more than once, in any spelling, as an upstream could then
 * read another copy than the one checked.
 */
static ngx_int_t
ngx_http_ms_auth_find_header(ngx_http_request_t *r, ngx_str_t *name,
    ngx_table_elt_t **found)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    *found = NULL;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NGX_OK;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        if (ngx_http_ms_auth_same_header(&h[i].key, name)) {
            if (*found != NULL) {
                return NGX_DECLINED;
            }

            *found = &h[i];
        }
    }
}


static ngx_int_t
ngx_http_ms_auth_handler(ngx_http_request_t *r)
{
    ms_store                     *store;
    ngx_table_elt_t              *h;
    ngx_pool_cleanup_t           *cln;
    ngx_http_ms_auth_ctx_t       *ctx;
    ngx_http_ms_auth_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_ms_auth_module);

    if (!alcf->enable) {
        return NGX_DECLINED;
    }

    /* One decision per client request: redirects and subrequests reuse it. */
    ctx = ngx_http_ms_auth_get_ctx(r->main);

    if (ctx != NULL) {
        if (ctx->admitted) {
            return NGX_DECLINED;
        }

        return ngx_http_ms_auth_reject(r, ctx);
    }

    cln = ngx_pool_cleanup_add(r->main->pool, sizeof(ngx_http_ms_auth_ctx_t));
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_ms_auth_ctx_t));
    cln->handler = ngx_http_ms_auth_ctx_cleanup;
    ngx_http_set_ctx(r->main, ctx, ngx_http_ms_auth_module);

    ctx->now_ms = ngx_http_ms_auth_now_ms();

    /* the library fills res only for decisions: no figures otherwise */
    ctx->res.quota_limit = -1;
    ctx->res.rate_limit = -1;

    if (ngx_http_ms_auth_find_header(r, &alcf->header, &h) != NGX_OK) {
        /* refused unchecked, so nothing is counted; never failed open */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "ms_auth: client sent more than one \"%V\" header "
                      "(\"-\" and \"_\" alike)", &alcf->header);
        ctx->status = MS_API_KEY_INVALID;
        return ngx_http_ms_auth_reject(r, ctx);
    }

    store = ngx_http_ms_auth_store_handle(r->connection->log);

    if (store == NULL) {
        ctx->status = ngx_http_ms_auth_open_status;

    } else {
        /* no header: a NULL key, which the library answers api_key_missing */
        /* one builder of the answer's fields for every host: the library */
        ctx->status = ms_store_check_http(store,
                                     h ? (const char *) h->value.data : NULL,
                                     h ? h->value.len : 0,
                                     ctx->now_ms, &ctx->res,
                                     ctx->fields, sizeof(ctx->fields),
                                     &ctx->fields_len);

        if (ctx->status >= MS_ERR_INVALID_ARGUMENT
            || ctx->fields_len >= sizeof(ctx->fields))
        {
            /* nothing written on a failure; never a cut line */
            ctx->fields_len = 0;
        }

        if (ctx->status >= MS_ERR_INVALID_ARGUMENT) {
            /* ms_last_error() reads "code: detail" */
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "ms_auth: check failed: %s", ms_last_error());
        }
    }

    if (ctx->status == MS_OK) {
        ctx->admitted = 1;

        /* on the response to come, as the Go and Python hosts do */
        if (ngx_http_ms_auth_add_fields(r, ctx) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_DECLINED;
    }

    if (ctx->status >= MS_ERR_INVALID_ARGUMENT
        && alcf->failure == NGX_HTTP_MS_AUTH_FAIL_OPEN)
    {
        /* failing open: the request goes on, $ms_auth_status tells why */
        ctx->admitted = 1;
        return NGX_DECLINED;
    }

    return ngx_http_ms_auth_reject(r, ctx);
}


static ngx_http_ms_auth_ctx_t *
ngx_http_ms_auth_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t      *cln;
    ngx_http_ms_auth_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ms_auth_module);

    if (ctx == NULL && (r->internal || r->filter_finalize)) {

        /* an internal redirect cleared r->ctx: find the decision again */
        for (cln = r->pool->cleanup; cln; cln = cln->next) {
            if (cln->handler == ngx_http_ms_auth_ctx_cleanup) {
                ctx = cln->data;
                ngx_http_set_ctx(r, ctx, ngx_http_ms_auth_module);
                break;
            }
        }
    }

    return ctx;
}


static void
ngx_http_ms_auth_ctx_cleanup(void *data)
{
    /* nothing to free: the handler only marks our context in the pool */
}


/*
 * The library's fields are lines "Name: value\r\n" (see ms_store_check_http):
 *   Retry-After: 43200                                   (429s only)
 *   RateLimit-Policy: "quota";q=50;w=86400, "rate";q=1000;w=1
 *   RateLimit: "quota";r=0;t=43200, "rate";r=999;t=1
 * Calls f(r, name, value) for each; the strings point into ctx->fields.
 */
static ngx_int_t
ngx_http_ms_auth_each_field(ngx_http_request_t *r, ngx_http_ms_auth_ctx_t *ctx,
    ngx_int_t (*f)(ngx_http_request_t *r, ngx_str_t *name, ngx_str_t *value,
    void *data), void *data)
{
    u_char     *p, *last, *eol, *colon;
    ngx_int_t   rc;
    ngx_str_t   name, value;

    p = (u_char *) ctx->fields;
    last = p + ctx->fields_len;

    while (p < last) {
        eol = ngx_strlchr(p, last, '\r');
        if (eol == NULL) {
            eol = last;
        }

        colon = ngx_strlchr(p, eol, ':');

        if (colon != NULL && colon + 1 < eol && colon[1] == ' ') {
            name.data = p;
            name.len = colon - p;
            value.data = colon + 2;
            value.len = eol - value.data;

            rc = f(r, &name, &value, data);
            if (rc != NGX_DECLINED) {
                return rc;
            }
        }

        p = eol + 2; /* past "\r\n" */
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_ms_auth_push_field(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value, void *data)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *name;
    h->value = *value;
    h->lowcase_key = NULL;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_DECLINED; /* go on */
}


static ngx_int_t
ngx_http_ms_auth_add_fields(ngx_http_request_t *r,
    ngx_http_ms_auth_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_ms_auth_each_field(r, ctx, ngx_http_ms_auth_push_field,
                                     NULL);

    return rc == NGX_DECLINED ? NGX_OK : rc;
}


/* data: the wanted name; its value is stored there */
static ngx_int_t
ngx_http_ms_auth_find_field(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value, void *data)
{
    ngx_str_t  *want = data;

    if (name->len == want->len
        && ngx_strncmp(name->data, want->data, want->len) == 0)
    {
        *want = *value;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_ms_auth_reject(ngx_http_request_t *r, ngx_http_ms_auth_ctx_t *ctx)
{
    char              tmp[256];
    size_t            len;
    u_char           *body;
    int32_t           http;
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;

    http = ms_status_http(ctx->status);
    if (http < 400 || http > 599) {
        http = NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    /* the documented body, e.g. {"success":false,"error":{...}} */
    len = ms_error_json(ctx->status, tmp, sizeof(tmp));

    body = ngx_pnalloc(r->pool, len + 1);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (len < sizeof(tmp)) {
        ngx_memcpy(body, tmp, len);

    } else {
        len = ngx_min(len, ms_error_json(ctx->status, (char *) body, len + 1));
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    r->headers_out.status = http;
    r->headers_out.content_type = ngx_http_ms_auth_json;
    r->headers_out.content_type_len = ngx_http_ms_auth_json.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = len;

    /* Retry-After on 429s and the RateLimit fields: none on 401s */
    if (ngx_http_ms_auth_add_fields(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = body;
    b->last = body + r->headers_out.content_length_n;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* -------------------------------------------------------------- variables */

typedef enum {
    NGX_HTTP_MS_AUTH_VAR_KEY_ID = 0,
    NGX_HTTP_MS_AUTH_VAR_PLAN,
    NGX_HTTP_MS_AUTH_VAR_STATUS,
    NGX_HTTP_MS_AUTH_VAR_RATELIMIT,
    NGX_HTTP_MS_AUTH_VAR_POLICY
} ngx_http_ms_auth_var_e;


static ngx_int_t
ngx_http_ms_auth_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                name;
    const char              *s;
    ngx_http_ms_auth_ctx_t  *ctx;

    ctx = ngx_http_ms_auth_get_ctx(r->main);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_MS_AUTH_VAR_KEY_ID:
        s = ctx->res.key_id;
        ctx->res.key_id[sizeof(ctx->res.key_id) - 1] = '\0';
        v->len = ngx_strlen(s);
        v->data = (u_char *) s;
        break;

    case NGX_HTTP_MS_AUTH_VAR_PLAN:
        s = ctx->res.plan;
        ctx->res.plan[sizeof(ctx->res.plan) - 1] = '\0';
        v->len = ngx_strlen(s);
        v->data = (u_char *) s;
        break;

    case NGX_HTTP_MS_AUTH_VAR_STATUS:
        s = ms_status_code(ctx->status);
        v->len = ngx_strlen(s);
        v->data = (u_char *) s;
        break;

    default: /* the RateLimit / RateLimit-Policy values, for logs */
        if (data == NGX_HTTP_MS_AUTH_VAR_RATELIMIT) {
            ngx_str_set(&name, "RateLimit");

        } else {
            ngx_str_set(&name, "RateLimit-Policy");
        }

        if (ngx_http_ms_auth_each_field(r, ctx, ngx_http_ms_auth_find_field,
                                        &name)
            != NGX_OK)
        {
            v->not_found = 1;
            return NGX_OK;
        }

        v->data = name.data;
        v->len = name.len;
        break;
    }

    if (v->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_http_variable_t  ngx_http_ms_auth_vars[] = {

    { ngx_string("ms_auth_key_id"), NULL, ngx_http_ms_auth_variable,
      NGX_HTTP_MS_AUTH_VAR_KEY_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ms_auth_plan"), NULL, ngx_http_ms_auth_variable,
      NGX_HTTP_MS_AUTH_VAR_PLAN, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ms_auth_status"), NULL, ngx_http_ms_auth_variable,
      NGX_HTTP_MS_AUTH_VAR_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ms_auth_ratelimit"), NULL, ngx_http_ms_auth_variable,
      NGX_HTTP_MS_AUTH_VAR_RATELIMIT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ms_auth_ratelimit_policy"), NULL, ngx_http_ms_auth_variable,
      NGX_HTTP_MS_AUTH_VAR_POLICY, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_ms_auth_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_ms_auth_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* ---------------------------------------------------------- configuration */

static void *
ngx_http_ms_auth_create_main_conf(ngx_conf_t *cf)
{
    /* ngx_pcalloc: store and on_file are empty strings */
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_ms_auth_main_conf_t));
}


static void *
ngx_http_ms_auth_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_ms_auth_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_ms_auth_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->enable = NGX_CONF_UNSET;
    conf->failure = NGX_CONF_UNSET_UINT;

    return conf;
}


static char *
ngx_http_ms_auth_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_ms_auth_loc_conf_t  *prev = parent;
    ngx_http_ms_auth_loc_conf_t  *conf = child;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_str_value(conf->header, prev->header, "X-API-Key");
    ngx_conf_merge_uint_value(conf->failure, prev->failure,
                              NGX_HTTP_MS_AUTH_FAIL_CLOSED);

    return NGX_CONF_OK;
}


static char *
ngx_http_ms_auth_enable(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                          *rv;
    ngx_http_ms_auth_loc_conf_t   *alcf = conf;
    ngx_http_ms_auth_main_conf_t  *amcf;

    rv = ngx_conf_set_flag_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ms_auth_module);

    /* remember where "ms_auth on" first appears, to name it in errors */
    if (alcf->enable && amcf->on_file.len == 0) {
        amcf->on_file = cf->conf_file->file.name;
        amcf->on_line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_ms_auth_header(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ms_auth_loc_conf_t  *alcf = conf;

    u_char      c;
    ngx_str_t  *value;
    ngx_uint_t  i;

    if (alcf->header.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "needs a header name";
    }

    /* an RFC 9110 token: what a client can actually send as a field name */
    for (i = 0; i < value[1].len; i++) {
        c = value[1].data[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || ngx_strchr("!#$%&'*+-.^_`|~", c))
        {
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid header name \"%V\" in "
                           "\"ms_auth_header\" directive",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    alcf->header = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_ms_auth_failure(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ms_auth_loc_conf_t  *alcf = conf;

    ngx_str_t  *value;

    if (alcf->failure != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "closed") == 0) {
        alcf->failure = NGX_HTTP_MS_AUTH_FAIL_CLOSED;

    } else if (ngx_strcmp(value[1].data, "open") == 0) {
        alcf->failure = NGX_HTTP_MS_AUTH_FAIL_OPEN;

    } else {
        /* ngx_conf_set_enum_slot's message would not name the directive */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"ms_auth_failure\" "
                           "directive, it must be \"closed\" or \"open\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * Opens and closes the store the way a worker will: in a child process with
 * the workers' user and group when the master runs as root, so that
 * "nginx -t" fails on a path the workers could not use, and so that the
 * master never holds a SQLite handle across its forks.
 */
static ngx_int_t
ngx_http_ms_auth_try_open(ngx_conf_t *cf, u_char *path, ngx_str_t *why)
{
    int               fds[2], status;
    char              msg[512];
    ssize_t           n;
    size_t            got;
    ngx_pid_t         pid;
    ms_store         *store;
    int32_t           rc;
    uid_t             uid;
    gid_t             gid;
    const char       *user;
    struct passwd    *pwd;
    struct group     *grp;
    ngx_core_conf_t  *ccf;

    uid = (uid_t) -1;
    gid = (gid_t) -1;
    user = NULL;

    if (geteuid() == 0) {
        ccf = (ngx_core_conf_t *) ngx_get_conf(cf->cycle->conf_ctx,
                                               ngx_core_module);

        if (ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT) {
            uid = ccf->user;
            gid = ccf->group;
            user = ccf->username;

        } else {
            /* "user" not given (yet): nginx will use its built-in default */
            pwd = getpwnam(NGX_USER);
            grp = getgrnam(NGX_GROUP);

            if (pwd != NULL && grp != NULL) {
                uid = pwd->pw_uid;
                gid = grp->gr_gid;
                user = NGX_USER;
            }
        }
    }

    if (pipe(fds) == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "pipe() failed");
        return NGX_ERROR;
    }

    pid = fork();

    if (pid == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "fork() failed");
        close(fds[0]);
        close(fds[1]);
        return NGX_ERROR;
    }

    if (pid == 0) {
        close(fds[0]);

        if (user != NULL && uid != 0) {
            if (setgid(gid) == -1
                || initgroups(user, gid) == -1
                || setuid(uid) == -1)
            {
                n = snprintf(msg, sizeof(msg),
                             "cannot switch to the worker user \"%s\"", user);
                (void) !write(fds[1], msg, n);
                _exit(1);
            }
        }

        rc = ms_store_open((const char *) path, &store);

        if (rc != MS_OK) {
            n = snprintf(msg, sizeof(msg), "%s%s%s%s",
                         ms_last_error(),
                         user ? " (as the worker user \"" : "",
                         user ? user : "", user ? "\")" : "");
            if (n > (ssize_t) sizeof(msg) - 1) {
                n = sizeof(msg) - 1;
            }
            (void) !write(fds[1], msg, n);
            _exit(1);
        }

        ms_store_close(store);
        _exit(0);
    }

    close(fds[1]);

    got = 0;
    for ( ;; ) {
        n = read(fds[0], msg + got, sizeof(msg) - 1 - got);
        if (n > 0) {
            got += n;
            if (got < sizeof(msg) - 1) {
                continue;
            }
        }
        if (n == -1 && ngx_errno == NGX_EINTR) {
            continue;
        }
        break;
    }
    close(fds[0]);
    msg[got] = '\0';

    while (waitpid(pid, &status, 0) == -1) {
        if (ngx_errno != NGX_EINTR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "waitpid() failed");
            return NGX_ERROR;
        }
    }

    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return NGX_OK;
    }

    why->len = got ? got : sizeof("the check process failed") - 1;
    why->data = ngx_pnalloc(cf->pool, why->len);
    if (why->data == NULL) {
        return NGX_ERROR;
    }
    ngx_memcpy(why->data, got ? msg : "the check process failed", why->len);

    return NGX_DECLINED;
}


static char *
ngx_http_ms_auth_store(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ms_auth_main_conf_t  *amcf = conf;

    ngx_str_t  *value, path;

    if (amcf->store.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    path = value[1];

    if (path.len == 0) {
        return "needs a path";
    }

    /* relative paths are relative to the configuration prefix */
    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    amcf->store = path;
    amcf->store_file = cf->conf_file->file.name;
    amcf->store_line = cf->conf_file->line;

    return NGX_CONF_OK;
}


static char *
ngx_http_ms_auth_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_ms_auth_main_conf_t  *amcf = conf;

    u_char           *path;
    ngx_str_t         why;
    ngx_int_t         rc;
    ngx_file_info_t   fi;

    if (amcf->store.len == 0) {
        if (amcf->on_file.len) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"ms_auth on\" in %V:%ui needs "
                          "\"ms_auth_store\" in the http block",
                          &amcf->on_file, amcf->on_line);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    /* ngx_conf_full_name() NUL-terminates the path it builds */
    path = ngx_pnalloc(cf->pool, amcf->store.len + 1);
    if (path == NULL) {
        return NGX_CONF_ERROR;
    }
    (void) ngx_cpystrn(path, amcf->store.data, amcf->store.len + 1);

    /*
     * The library creates a missing file; a mistyped path would then give an
     * empty store that rejects every key, so a missing file is an error.
     */
    if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, ngx_errno,
                      "\"ms_auth_store\" in %V:%ui: cannot use \"%s\"; "
                      "create the store with \"ms-auth --db %s key create\"",
                      &amcf->store_file, amcf->store_line, path, path);
        return NGX_CONF_ERROR;
    }

    if (!ngx_is_file(&fi)) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"ms_auth_store\" in %V:%ui: \"%s\" is not a file",
                      &amcf->store_file, amcf->store_line, path);
        return NGX_CONF_ERROR;
    }

    /* the signaller ("nginx -s reload") does not run the http block */
    if (ngx_process != NGX_PROCESS_SIGNALLER) {
        rc = ngx_http_ms_auth_try_open(cf, path, &why);

        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        if (rc == NGX_DECLINED) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"ms_auth_store\" in %V:%ui: cannot open \"%s\": %V",
                          &amcf->store_file, amcf->store_line, path, &why);
            return NGX_CONF_ERROR;
        }
    }

    amcf->store.data = path;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ms_auth_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * nginx runs a location's "return" in the rewrite phase, before the
     * access phase, so the decision is made in the rewrite phase too.
     * init_module then moves the handler to the front of that phase.
     */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_ms_auth_handler;

    return NGX_OK;
}


/*
 * Runs after the phase engine is built: makes our handler the first of the
 * location rewrite phase, ahead of the rewrite module ("return", "rewrite",
 * "if") and of any module loaded after this one, so no handler of that phase
 * can answer before the decision. All entries of a phase share checker and
 * next, so moving the handler pointers is enough.
 */
static ngx_int_t
ngx_http_ms_auth_init_module(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i, first;
    ngx_http_phase_handler_t   *ph;
    ngx_http_core_main_conf_t  *cmcf;

    if (ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module)
        == NULL)
    {
        return NGX_OK;  /* no http block */
    }

    cmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module);
    ph = cmcf->phase_engine.handlers;
    first = cmcf->phase_engine.location_rewrite_index;

    if (ph == NULL || first == (ngx_uint_t) -1) {
        return NGX_OK;
    }

    for (i = first; ph[i].checker == ngx_http_core_rewrite_phase; i++) {

        if (ph[i].handler != ngx_http_ms_auth_handler) {
            continue;
        }

        for ( /* void */ ; i > first; i--) {
            ph[i].handler = ph[i - 1].handler;
        }

        ph[first].handler = ngx_http_ms_auth_handler;
        break;
    }

    return NGX_OK;
}


/* ---------------------------------------------------------------- process */

static ngx_int_t
ngx_http_ms_auth_init_process(ngx_cycle_t *cycle)
{
    ngx_http_ms_auth_main_conf_t  *amcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    if (ngx_http_cycle_get_module_main_conf(cycle, ngx_http_core_module)
        == NULL)
    {
        return NGX_OK;  /* no http block */
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_ms_auth_module);

    if (amcf == NULL || amcf->store.len == 0) {
        return NGX_OK;
    }

    /* opened here, after fork: SQLite handles must not cross a fork */
    ngx_http_ms_auth_path = amcf->store.data;
    ngx_http_ms_auth_handle = NULL;
    ngx_http_ms_auth_open_tried = 0;

    (void) ngx_http_ms_auth_store_handle(cycle->log);

    /* a worker that cannot open the store still runs: it answers 503 */
    return NGX_OK;
}


static void
ngx_http_ms_auth_exit_process(ngx_cycle_t *cycle)
{
    /* closing flushes the counts this worker still holds */
    ms_store_close(ngx_http_ms_auth_handle);
    ngx_http_ms_auth_handle = NULL;
}
