/* kvdisk.c - the disk KV cache: session checkpoints keyed by the text of the
 * prefix they hold.
 *
 * Each entry is two files named after the 64-bit FNV-1a hash of its text:
 *   KEY.ds4s  the session (ds4_session_save: its own checksum, model
 *             fingerprint, written to a temporary name and renamed);
 *   KEY.meta  "DS4M", u32 version, u64 model id, u32 tokens, u32 hits,
 *             u64 created, u64 last used (unix s), u8 reason (0 unknown, 1 cold,
 *             2 continued, 3 evict, 4 shutdown, 5 system), 3 bytes 0,
 *             u32 text length, the text, u64 FNV-1a of everything before;
 *             written second (temporary name + fsync + rename), so a meta
 *             file means a complete entry.
 * A prompt can use an entry when the entry's text is a byte prefix of the
 * prompt's text; the longest such entry wins. Files that do not parse, fail
 * their checksum, belong to another model (model id: size and first MiB of
 * the GGUF) or fail to load are reported in the log and ignored.
 *
 * Eviction: when the files exceed the budget, entries go in order of
 * tokens x (1 + hits) x 0.5^(hours since last use / 6) (short, cold, old
 * first), divided by 16 for an entry superseded by a longer one (see
 * superseded()), never the entry the current request looked up nor the one
 * just written.
 *
 * The tool memory is persisted beside the entries in toolmem.log (appended
 * records: "TMR1", u32 n_ids, u32 text length, u8 thinking, ids as u32
 * length + bytes, the text, u64 FNV-1a of the record); a torn tail record is
 * ignored.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"

#define META_MAGIC 0x4d345344u /* "DS4M" */
#define META_VERSION 1
#define TOOL_MAGIC 0x31524d54u /* "TMR1" */

typedef struct {
    uint64_t key;
    char *text;
    size_t text_len;
    uint32_t n_tokens, hits;
    uint64_t created, last_used, bytes;
    uint8_t reason;
} kv_entry;

struct srv_kvdisk {
    pthread_mutex_t mu;
    char *dir;
    uint64_t budget;
    uint32_t min_tokens;
    uint64_t model_id;
    kv_entry *e;
    size_t n, cap;
    uint64_t pinned; /* key of the last lookup's entry (0: none) */
    srv_kv_stats st;
    FILE *toollog;
    pthread_mutex_t log_mu; /* the tool log's own lock: no file I/O under mu */
};

static const char *REASONS[] = {"unknown", "cold", "continued", "evict", "shutdown", "system"};
#define N_REASONS 6

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}
#define FNV0 1469598103934665603ull

static char *path_of(const srv_kvdisk *kv, uint64_t key, const char *ext) {
    size_t n = strlen(kv->dir) + 40;
    char *p = malloc(n);
    snprintf(p, n, "%s/%016llx.%s", kv->dir, (unsigned long long)key, ext);
    return p;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static uint64_t model_identity(const char *path) {
    uint64_t h = FNV0, size = file_size(path);
    h = fnv(h, &size, sizeof size);
    FILE *fp = fopen(path, "rb");
    if (fp) {
        char *buf = malloc(1 << 20);
        size_t n = fread(buf, 1, 1 << 20, fp);
        h = fnv(h, buf, n);
        free(buf);
        fclose(fp);
    }
    return h ? h : 1;
}

/* ---- meta files ---- */

static bool write_meta(srv_kvdisk *kv, const kv_entry *en) {
    sbuf b = {0};
    uint32_t u32;
    uint64_t u64;
#define PUT32(v) (u32 = (uint32_t)(v), sb_put(&b, &u32, 4))
#define PUT64(v) (u64 = (uint64_t)(v), sb_put(&b, &u64, 8))
    PUT32(META_MAGIC);
    PUT32(META_VERSION);
    PUT64(kv->model_id);
    PUT32(en->n_tokens);
    PUT32(en->hits);
    PUT64(en->created);
    PUT64(en->last_used);
    uint8_t pad[4] = {en->reason, 0, 0, 0};
    sb_put(&b, pad, 4);
    PUT32(en->text_len);
    sb_put(&b, en->text, en->text_len);
    PUT64(fnv(FNV0, b.p, b.n));
#undef PUT32
#undef PUT64
    char *path = path_of(kv, en->key, "meta");
    size_t tl = strlen(path) + 32;
    char *tmp = malloc(tl);
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    FILE *fp = fopen(tmp, "wb");
    bool ok = fp && fwrite(b.p, 1, b.n, fp) == b.n;
    if (fp) {
        ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
        ok = (fclose(fp) == 0) && ok;
    }
    ok = ok && rename(tmp, path) == 0;
    if (!ok) {
        srv_log("kv cache: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    free(path);
    sb_free(&b);
    return ok;
}

/* Parses a meta file; NULL + why on failure. */
static bool read_meta(srv_kvdisk *kv, const char *path, kv_entry *en, const char **why) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        *why = "cannot open";
        return false;
    }
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    const size_t head = 4 + 4 + 8 + 4 + 4 + 8 + 8 + 4 + 4;
    if (size < (long)(head + 8) || size > (1l << 31)) {
        fclose(fp);
        *why = "truncated or not a cache file";
        return false;
    }
    uint8_t *b = malloc((size_t)size);
    bool rd = fread(b, 1, (size_t)size, fp) == (size_t)size;
    fclose(fp);
    uint32_t magic, version, n_tokens, hits, text_len;
    uint64_t model, created, last, sum;
    memcpy(&magic, b, 4);
    memcpy(&version, b + 4, 4);
    memcpy(&model, b + 8, 8);
    memcpy(&n_tokens, b + 16, 4);
    memcpy(&hits, b + 20, 4);
    memcpy(&created, b + 24, 8);
    memcpy(&last, b + 32, 8);
    memcpy(&text_len, b + 44, 4);
    memcpy(&sum, b + size - 8, 8);
    if (!rd || magic != META_MAGIC) *why = "not a ds4 cache file";
    else if (version != META_VERSION) *why = "unsupported cache file version";
    else if (head + (size_t)text_len + 8 != (size_t)size) *why = "truncated";
    else if (fnv(FNV0, b, (size_t)size - 8) != sum) *why = "checksum mismatch (corrupt)";
    else if (model != kv->model_id) *why = "made with a different model";
    else {
        en->n_tokens = n_tokens;
        en->hits = hits;
        en->created = created;
        en->last_used = last;
        en->reason = b[40] < N_REASONS ? b[40] : 0;
        en->text_len = text_len;
        en->text = malloc(text_len + 1);
        memcpy(en->text, b + head, text_len);
        en->text[text_len] = 0;
        free(b);
        return true;
    }
    free(b);
    return false;
}

static void remove_entry_files(srv_kvdisk *kv, uint64_t key) {
    char *m = path_of(kv, key, "meta"), *s = path_of(kv, key, "ds4s");
    unlink(m); /* meta first: without it the entry does not exist */
    unlink(s);
    free(m);
    free(s);
}

static void drop_index(srv_kvdisk *kv, size_t i) {
    free(kv->e[i].text);
    kv->e[i] = kv->e[--kv->n];
}

static ssize_t find_key(srv_kvdisk *kv, uint64_t key) {
    for (size_t i = 0; i < kv->n; i++)
        if (kv->e[i].key == key) return (ssize_t)i;
    return -1;
}

static void add_entry(srv_kvdisk *kv, kv_entry en) {
    if (kv->n == kv->cap) {
        kv->cap = kv->cap ? kv->cap * 2 : 32;
        kv->e = realloc(kv->e, kv->cap * sizeof *kv->e);
    }
    kv->e[kv->n++] = en;
}

/* ---- tool log ---- */

static void tool_persist(void *ud, const char *const *ids, size_t n_ids, const char *text, size_t len, bool thinking) {
    srv_kvdisk *kv = ud;
    if (!kv->toollog) return;
    sbuf b = {0};
    uint32_t u = TOOL_MAGIC;
    sb_put(&b, &u, 4);
    u = (uint32_t)n_ids;
    sb_put(&b, &u, 4);
    u = (uint32_t)len;
    sb_put(&b, &u, 4);
    uint8_t th = thinking;
    sb_put(&b, &th, 1);
    for (size_t i = 0; i < n_ids; i++) {
        u = ids[i] ? (uint32_t)strlen(ids[i]) : 0;
        sb_put(&b, &u, 4);
        if (u) sb_put(&b, ids[i], u);
    }
    sb_put(&b, text, len);
    uint64_t sum = fnv(FNV0, b.p, b.n);
    sb_put(&b, &sum, 8);
    pthread_mutex_lock(&kv->log_mu);
    if (fwrite(b.p, 1, b.n, kv->toollog) != b.n || fflush(kv->toollog) != 0)
        srv_log("kv cache: cannot append to the tool log: %s", strerror(errno));
    pthread_mutex_unlock(&kv->log_mu);
    sb_free(&b);
}

static void load_toollog(srv_kvdisk *kv, srv_toolmem *tm, const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = size > 0 ? malloc((size_t)size) : NULL;
    if (!b || fread(b, 1, (size_t)size, fp) != (size_t)size) {
        free(b);
        fclose(fp);
        return;
    }
    fclose(fp);
    size_t p = 0, n_rec = 0;
    while (p + 13 <= (size_t)size) {
        uint32_t magic, n_ids, tl;
        memcpy(&magic, b + p, 4);
        memcpy(&n_ids, b + p + 4, 4);
        memcpy(&tl, b + p + 8, 4);
        if (magic != TOOL_MAGIC || n_ids > 4096) break;
        size_t q = p + 13;
        char **ids = calloc(n_ids ? n_ids : 1, sizeof *ids);
        bool ok = true;
        for (uint32_t i = 0; i < n_ids && ok; i++) {
            uint32_t l;
            if (q + 4 > (size_t)size) { ok = false; break; }
            memcpy(&l, b + q, 4);
            q += 4;
            if (l > (size_t)size - q) { ok = false; break; }
            ids[i] = strndup((const char *)b + q, l);
            q += l;
        }
        ok = ok && tl <= (size_t)size - q && q + tl + 8 <= (size_t)size;
        uint64_t sum = 0;
        if (ok) memcpy(&sum, b + q + tl, 8);
        ok = ok && fnv(FNV0, b + p, q + tl - p) == sum;
        if (ok) toolmem_load(tm, (const char *const *)ids, n_ids, (const char *)b + q, tl, b[p + 12] != 0);
        for (uint32_t i = 0; i < n_ids; i++) free(ids[i]);
        free(ids);
        if (!ok) break;
        p = q + tl + 8;
        n_rec++;
    }
    if (p != (size_t)size) srv_log("kv cache: %s: ignoring %ld damaged bytes at its end", path, size - (long)p);
    if (n_rec) srv_log("kv cache: %zu tool-call turns restored from %s", n_rec, path);
    free(b);
}

/* ---- open, lookup, save, evict ---- */

srv_kvdisk *kvdisk_open(const char *dir, uint64_t budget_bytes, uint32_t min_tokens, const char *model_path,
                        srv_toolmem *tm, char *err, size_t errlen) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "--kv-disk-dir %s: %s", dir, strerror(errno));
        return NULL;
    }
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "--kv-disk-dir %s: %s", dir, strerror(errno));
        return NULL;
    }
    srv_kvdisk *kv = calloc(1, sizeof *kv);
    pthread_mutex_init(&kv->mu, NULL);
    pthread_mutex_init(&kv->log_mu, NULL);
    kv->dir = strdup(dir);
    kv->budget = budget_bytes;
    kv->min_tokens = min_tokens;
    kv->model_id = model_identity(model_path);
    struct dirent *de;
    size_t n_bad = 0;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        size_t l = strlen(nm);
        size_t pl = strlen(dir) + l + 2;
        char *path = malloc(pl);
        snprintf(path, pl, "%s/%s", dir, nm);
        if (strstr(nm, ".tmp.")) { /* an interrupted write */
            unlink(path);
        } else if (l == 21 && !strcmp(nm + 16, ".meta")) {
            kv_entry en = {.key = strtoull(nm, NULL, 16)};
            const char *why = NULL;
            char *sp = path_of(kv, en.key, "ds4s");
            if (!read_meta(kv, path, &en, &why)) {
                srv_log("kv cache: ignoring %s: %s", path, why);
                n_bad++;
            } else if (fnv(FNV0, en.text, en.text_len) != en.key || !(en.bytes = file_size(sp))) {
                srv_log("kv cache: ignoring %s: %s", path, en.bytes ? "name does not match its text" : "its .ds4s file is missing");
                free(en.text);
                n_bad++;
            } else {
                en.bytes += file_size(path);
                add_entry(kv, en);
            }
            free(sp);
        }
        free(path);
    }
    closedir(d);
    uint64_t total = 0;
    for (size_t i = 0; i < kv->n; i++) total += kv->e[i].bytes;
    srv_log("kv cache: %s: %zu entries, %.1f MiB of %.1f MiB%s", dir, kv->n, total / 1048576.0, budget_bytes / 1048576.0,
            n_bad ? " (some files ignored, see above)" : "");
    size_t tl = strlen(dir) + 16;
    char *tlp = malloc(tl);
    snprintf(tlp, tl, "%s/toolmem.log", dir);
    load_toollog(kv, tm, tlp);
    kv->toollog = fopen(tlp, "ab");
    free(tlp);
    toolmem_set_persist(tm, tool_persist, kv);
    return kv;
}

void kvdisk_close(srv_kvdisk *kv) {
    if (!kv) return;
    for (size_t i = 0; i < kv->n; i++) free(kv->e[i].text);
    free(kv->e);
    if (kv->toollog) fclose(kv->toollog);
    free(kv->dir);
    pthread_mutex_destroy(&kv->mu);
    pthread_mutex_destroy(&kv->log_mu);
    free(kv);
}

char *kvdisk_lookup(srv_kvdisk *kv, const char *text, size_t len, uint32_t *n_tokens, size_t *text_len) {
    pthread_mutex_lock(&kv->mu);
    kv->st.lookups++;
    ssize_t best = -1;
    for (size_t i = 0; i < kv->n; i++) {
        kv_entry *en = &kv->e[i];
        if (en->text_len <= len && (best < 0 || en->text_len > kv->e[best].text_len) &&
            !memcmp(en->text, text, en->text_len))
            best = (ssize_t)i;
    }
    char *path = NULL;
    kv->pinned = 0;
    if (best >= 0) {
        kv->pinned = kv->e[best].key;
        *n_tokens = kv->e[best].n_tokens;
        *text_len = kv->e[best].text_len;
        path = path_of(kv, kv->e[best].key, "ds4s");
    }
    pthread_mutex_unlock(&kv->mu);
    return path;
}

static uint64_t key_of_path(const char *path) {
    const char *b = strrchr(path, '/');
    return strtoull(b ? b + 1 : path, NULL, 16);
}

void kvdisk_touch(srv_kvdisk *kv, const char *path) {
    pthread_mutex_lock(&kv->mu);
    ssize_t i = find_key(kv, key_of_path(path));
    kv_entry copy = {0};
    if (i >= 0) {
        kv_entry *en = &kv->e[i];
        en->hits++;
        en->last_used = (uint64_t)wall_s();
        kv->st.hits++;
        kv->st.hit_tokens += en->n_tokens;
        copy = *en;
        copy.text = malloc(en->text_len + 1);
        memcpy(copy.text, en->text, en->text_len + 1);
    }
    pthread_mutex_unlock(&kv->mu);
    if (copy.text) write_meta(kv, &copy); /* file I/O outside the lock (/health reads the stats) */
    free(copy.text);
}

void kvdisk_reject(srv_kvdisk *kv, const char *path, const char *why) {
    srv_log("kv cache: dropping %s: %s", path, why);
    pthread_mutex_lock(&kv->mu);
    uint64_t key = key_of_path(path);
    ssize_t i = find_key(kv, key);
    if (i >= 0) drop_index(kv, (size_t)i);
    kv->st.rejected++;
    pthread_mutex_unlock(&kv->mu);
    remove_entry_files(kv, key);
}

/* An entry whose text is a prefix of a longer entry's that was made after
 * the shorter one was last used: every prompt that would use it now uses the
 * longer one, except one that leaves the conversation in between. (A shorter
 * entry used since, e.g. a system prompt that other conversations share, was
 * chosen by prompts that do not continue the longer one: it is not.) */
static bool superseded(const srv_kvdisk *kv, const kv_entry *en) {
    if (en->reason == 5) return false; /* a system block serves every conversation of its agent */
    for (size_t i = 0; i < kv->n; i++) {
        const kv_entry *o = &kv->e[i];
        if (o != en && o->text_len > en->text_len && o->created >= en->last_used &&
            !memcmp(o->text, en->text, en->text_len))
            return true;
    }
    return false;
}

static double score(const srv_kvdisk *kv, const kv_entry *en, uint64_t now) {
    double age_h = now > en->last_used ? (double)(now - en->last_used) / 3600.0 : 0;
    double s = (double)en->n_tokens * (1.0 + en->hits) * pow(0.5, age_h / 6.0);
    return superseded(kv, en) ? s / 16.0 : s;
}

/* Drops entries from the index until it fits the budget (kv->mu held); the
 * keys whose files must go are appended to gone[]. */
static void evict_to_budget(srv_kvdisk *kv, uint64_t keep, uint64_t **gone, size_t *n_gone) {
    uint64_t now = (uint64_t)wall_s();
    for (;;) {
        uint64_t total = 0;
        for (size_t i = 0; i < kv->n; i++) total += kv->e[i].bytes;
        if (total <= kv->budget) return;
        ssize_t worst = -1;
        for (size_t i = 0; i < kv->n; i++) {
            if (kv->e[i].key == keep || kv->e[i].key == kv->pinned) continue;
            if (worst < 0 || score(kv, &kv->e[i], now) < score(kv, &kv->e[worst], now)) worst = (ssize_t)i;
        }
        if (worst < 0) return;
        srv_log("kv cache: evicting %016llx (%u tokens, %u hits, %s)", (unsigned long long)kv->e[worst].key,
                kv->e[worst].n_tokens, kv->e[worst].hits, REASONS[kv->e[worst].reason]);
        *gone = realloc(*gone, (*n_gone + 1) * sizeof **gone);
        (*gone)[(*n_gone)++] = kv->e[worst].key;
        drop_index(kv, (size_t)worst);
        kv->st.evictions++;
    }
}

bool kvdisk_save(srv_kvdisk *kv, ds4_session *s, const char *text, size_t len, const char *reason) {
    uint32_t n = ds4_session_n_tokens(s);
    if (n < kv->min_tokens || !text) return false;
    uint64_t key = fnv(FNV0, text, len);
    uint8_t r = 0;
    for (uint8_t i = 0; i < N_REASONS; i++)
        if (!strcmp(REASONS[i], reason)) r = i;
    pthread_mutex_lock(&kv->mu);
    ssize_t i = find_key(kv, key);
    if (i >= 0 && kv->e[i].text_len == len && !memcmp(kv->e[i].text, text, len)) {
        kv->e[i].last_used = (uint64_t)wall_s();
        pthread_mutex_unlock(&kv->mu);
        return true;
    }
    if (i >= 0) drop_index(kv, (size_t)i); /* a hash collision: the new text replaces it */
    pthread_mutex_unlock(&kv->mu);
    double t0 = now_s();
    char *sp = path_of(kv, key, "ds4s");
    char err[256];
    bool ok = ds4_session_save(s, sp, err, sizeof err);
    if (!ok) srv_log("kv cache: save failed: %s", err);
    kv_entry en = {.key = key, .text_len = len, .n_tokens = n, .reason = r};
    en.created = en.last_used = (uint64_t)wall_s();
    uint64_t *gone = NULL;
    size_t n_gone = 0;
    if (ok) {
        en.text = malloc(len + 1);
        memcpy(en.text, text, len);
        en.text[len] = 0;
        ok = write_meta(kv, &en); /* file I/O outside the lock */
        if (ok) {
            char *mp = path_of(kv, key, "meta");
            en.bytes = file_size(sp) + file_size(mp);
            free(mp);
            pthread_mutex_lock(&kv->mu);
            add_entry(kv, en);
            kv->st.saves++;
            kv->st.save_bytes += en.bytes;
            evict_to_budget(kv, key, &gone, &n_gone);
            pthread_mutex_unlock(&kv->mu);
            srv_log("kv cache: saved %u tokens (%s, %.1f MiB in %.2fs)", n, reason, en.bytes / 1048576.0, now_s() - t0);
        } else {
            free(en.text);
            unlink(sp);
        }
    }
    for (size_t i = 0; i < n_gone; i++) remove_entry_files(kv, gone[i]);
    free(gone);
    free(sp);
    return ok;
}

srv_kv_stats kvdisk_stats(srv_kvdisk *kv) {
    pthread_mutex_lock(&kv->mu);
    srv_kv_stats s = kv->st;
    pthread_mutex_unlock(&kv->mu);
    return s;
}
