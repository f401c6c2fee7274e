/* convert.c - the converter pipeline behind ds4-quantize (see convert.h).
 *
 * Flow: open checkpoint -> hparams from config.json -> plan (schema tensors,
 * source tensors, target types) -> write metadata + tensor table to
 * OUT.tmp.PID -> stream every tensor in row chunks (decode FP8/FP4/BF16 rows,
 * quantize, write; chunks split over threads) -> reopen the temporary file and
 * check it against the schema -> rename over OUT.
 *
 * Memory is bounded by the chunk size (CHUNK_ELEMS floats per chunk plus the
 * quantized bytes), not by the model: the 160 GB official checkpoint converts
 * in a few GB of RAM. Importance for IQ2_XXS comes from the imatrix when it
 * has an entry, else from a first pass computing Σ_rows w² per column.
 */
#include "convert.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hf_checkpoint.h"
#include "imatrix.h"
#include "quant.h"
#include "hf_tokenizer.h"

#define CHUNK_ELEMS (16u << 20) /* floats decoded per chunk (64 MiB) */

/* ------------------------------------------------------------------------ */
/* recipes */

static const char *const recipe_names[RECIPE_COUNT] = {"f32", "f16", "q8", "q2", "q4"};

bool convert_recipe_from_name(const char *name, convert_recipe *out) {
    for (int i = 0; i < RECIPE_COUNT; i++)
        if (strcmp(name, recipe_names[i]) == 0) {
            *out = (convert_recipe)i;
            return true;
        }
    return false;
}

const char *convert_recipe_name(convert_recipe r) { return (unsigned)r < RECIPE_COUNT ? recipe_names[r] : "?"; }

ds4_dtype convert_recipe_type(convert_recipe r, ds4_family fam) {
    if (fam == DS4_FAM_VECTOR) return DS4_TYPE_F32;
    if (fam == DS4_FAM_TID2EID) return DS4_TYPE_I32;
    switch (r) {
    case RECIPE_F32: return DS4_TYPE_F32;
    case RECIPE_F16: return DS4_TYPE_F16;
    case RECIPE_Q8: return DS4_TYPE_Q8_0;
    case RECIPE_Q2:
    case RECIPE_Q4:
        switch (fam) {
        case DS4_FAM_OUTPUT:
        case DS4_FAM_ATTN_PROJ:
        case DS4_FAM_SHARED: return DS4_TYPE_Q8_0;
        case DS4_FAM_EXPERT_GATE_UP: return r == RECIPE_Q2 ? DS4_TYPE_IQ2_XXS : DS4_TYPE_Q4_K;
        case DS4_FAM_EXPERT_DOWN: return r == RECIPE_Q2 ? DS4_TYPE_Q2_K : DS4_TYPE_Q4_K;
        default: return DS4_TYPE_F16; /* embedding, HC, router, compressor, indexer */
        }
    default: return DS4_TYPE_F32;
    }
}

ds4_dtype convert_fit_type(ds4_dtype want, uint64_t ne0) {
    const ds4_dtype_traits *t = ds4_dtype_info(want);
    if (t && ne0 % t->block_elems == 0) return want;
    if (t && t->block_elems > 32 && ne0 % 32 == 0) return DS4_TYPE_Q8_0;
    return DS4_TYPE_F16;
}

/* ------------------------------------------------------------------------ */
/* plan */

typedef struct {
    ds4_tensor_spec spec;
    ds4_dtype type;   /* what is written */
    ds4_dtype wanted; /* recipe/override choice before the block-size fallback */
    hf_tensor *src;   /* 1 (plain) or n_expert (expert stack) source matrices */
    uint32_t n_src;
    const st_tensor *raw; /* tid2eid */
    uint64_t n_elems;
} plan_item;

static volatile sig_atomic_t g_interrupted = 0;
static void on_signal(int sig) {
    (void)sig;
    g_interrupted = 1;
}

static void log_err(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ds4-quantize: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static bool plan_tensor(const hf_checkpoint *ck, const ds4_hparams *hp, const convert_options *opt, plan_item *it,
                        char *err, size_t errlen) {
    const ds4_tensor_spec *s = &it->spec;
    ds4_dtype t = convert_recipe_type(opt->recipe, s->family);
    if (opt->has_override[s->family]) t = opt->override_type[s->family];
    it->wanted = t;
    if (!ds4_family_allows(s->family, t)) {
        snprintf(err, errlen, "%s: type %s is not allowed for %s tensors", s->name, ds4_dtype_name(t),
                 ds4_family_name(s->family));
        return false;
    }
    it->type = s->family == DS4_FAM_TID2EID || s->family == DS4_FAM_VECTOR ? t : convert_fit_type(t, s->ne[0]);
    it->n_elems = s->ne[0] * s->ne[1] * s->ne[2];
    if (s->hf_layout == DS4_HF_TID2EID) {
        const st_tensor *r = hf_checkpoint_find(ck, s->hf_name);
        if (!r) {
            snprintf(err, errlen, "checkpoint has no tensor '%s' (needed for %s)", s->hf_name, s->name);
            return false;
        }
        if ((r->dtype != ST_I64 && r->dtype != ST_I32) || r->n_dims != 2 || r->shape[0] != s->ne[1] ||
            r->shape[1] != s->ne[0]) {
            snprintf(err, errlen, "tensor '%s' must be I64 [%llu, %llu] (token -> expert ids), found %s with %u dims",
                     s->hf_name, (unsigned long long)s->ne[1], (unsigned long long)s->ne[0], r->dtype_name, r->n_dims);
            return false;
        }
        it->raw = r;
        return true;
    }
    it->n_src = s->hf_layout == DS4_HF_EXPERT_STACK ? (uint32_t)s->ne[2] : 1;
    it->src = calloc(it->n_src, sizeof(hf_tensor));
    for (uint32_t e = 0; e < it->n_src; e++) {
        char name[160];
        if (s->hf_layout == DS4_HF_EXPERT_STACK) snprintf(name, sizeof name, s->hf_name, (int)e);
        else snprintf(name, sizeof name, "%s", s->hf_name);
        uint64_t rows = s->n_dims >= 2 ? s->ne[1] : 1, cols = s->ne[0];
        if (!hf_tensor_get(ck, name, rows, cols, &it->src[e], err, errlen)) return false;
    }
    (void)hp;
    return true;
}

/* ------------------------------------------------------------------------ */
/* parallel row work */

typedef struct {
    const hf_tensor *src;
    uint64_t row0, n_rows, cols;
    ds4_dtype type;
    const float *imat; /* NULL or cols floats */
    uint8_t *out;      /* n_rows * row_bytes (quantize mode) */
    size_t row_bytes;
    double *colsum;    /* cols doubles (sumsq mode) */
    bool sumsq_mode;
    bool bad;          /* non-finite input seen */
    uint64_t bad_row;
} row_job;

static void *row_worker(void *arg) {
    row_job *j = arg;
    float *buf = malloc(j->cols * sizeof(float));
    if (!buf) {
        j->bad = true;
        return NULL;
    }
    for (uint64_t r = 0; r < j->n_rows; r++) {
        hf_tensor_read_rows(j->src, j->row0 + r, 1, buf);
        for (uint64_t c = 0; c < j->cols; c++) {
            if (!isfinite(buf[c])) {
                j->bad = true;
                j->bad_row = j->row0 + r;
                free(buf);
                return NULL;
            }
        }
        if (j->sumsq_mode) {
            for (uint64_t c = 0; c < j->cols; c++) j->colsum[c] += (double)buf[c] * buf[c];
        } else {
            ds4_quantize_row(j->type, buf, j->out + r * j->row_bytes, (int64_t)j->cols, j->imat);
        }
    }
    free(buf);
    return NULL;
}

/* Runs rows [row0, row0+n) of src over n_threads workers. */
static bool run_rows(const hf_tensor *src, uint64_t row0, uint64_t n, uint64_t cols, ds4_dtype type, const float *imat,
                     uint8_t *out, size_t row_bytes, double *colsum, int n_threads, const char *name) {
    if ((uint64_t)n_threads > n) n_threads = (int)n;
    if (n_threads < 1) n_threads = 1;
    row_job jobs[256];
    pthread_t th[256];
    double *partial = NULL;
    if (colsum) partial = calloc((size_t)n_threads * cols, sizeof(double));
    uint64_t per = (n + (uint64_t)n_threads - 1) / (uint64_t)n_threads;
    int started = 0;
    for (int t = 0; t < n_threads; t++) {
        uint64_t a = (uint64_t)t * per, b = a + per > n ? n : a + per;
        if (a >= b) break;
        jobs[t] = (row_job){.src = src, .row0 = row0 + a, .n_rows = b - a, .cols = cols, .type = type, .imat = imat,
                            .out = out ? out + a * row_bytes : NULL, .row_bytes = row_bytes,
                            .colsum = partial ? partial + (size_t)t * cols : NULL, .sumsq_mode = colsum != NULL};
        if (t == 0 || pthread_create(&th[t], NULL, row_worker, &jobs[t]) != 0) {
            if (t != 0) { /* could not start a thread: do it here */
                row_worker(&jobs[t]);
                jobs[t].n_rows = 0;
            }
        }
        started = t + 1;
    }
    row_worker(&jobs[0]);
    bool ok = !jobs[0].bad;
    uint64_t bad_row = jobs[0].bad_row;
    for (int t = 1; t < started; t++) {
        if (jobs[t].n_rows) pthread_join(th[t], NULL);
        if (jobs[t].bad && ok) {
            ok = false;
            bad_row = jobs[t].bad_row;
        }
    }
    if (colsum && partial) {
        for (int t = 0; t < started; t++)
            for (uint64_t c = 0; c < cols; c++) colsum[c] += partial[(size_t)t * cols + c];
    }
    free(partial);
    if (!ok) log_err("%s: non-finite weight in source row %llu (corrupt checkpoint?)", name, (unsigned long long)bad_row);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* progress */

typedef struct {
    uint64_t total, done;
    double t0, last_print;
    bool tty;
} progress;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress_show(progress *p, const char *what, bool force) {
    double t = now_s();
    if (!force && t - p->last_print < (p->tty ? 0.25 : 10.0)) return;
    p->last_print = t;
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    double el = t - p->t0, eta = frac > 0 ? el / frac - el : 0;
    if (p->tty) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r[%s] %5.1f%%  %6.0fs elapsed  ETA %6.0fs  %-40.40s", bar, frac * 100, el, eta, what);
    } else {
        fprintf(stderr, "progress %5.1f%%  elapsed %.0fs  ETA %.0fs  %s\n", frac * 100, el, eta, what);
    }
    fflush(stderr);
}

/* ------------------------------------------------------------------------ */
/* writing one tensor */

static bool write_matrix(gguf_writer *w, const hf_tensor *src, uint64_t rows, uint64_t cols, ds4_dtype type,
                         const float *imat, int n_threads, const char *name, progress *pg) {
    const size_t row_bytes = (size_t)(cols / ds4_dtype_info(type)->block_elems) * ds4_dtype_info(type)->block_bytes;
    float *fallback = NULL;
    if (type == DS4_TYPE_IQ2_XXS && !imat) {
        /* IQ2_XXS needs importance: Σ_rows w² per column (first pass) */
        double *colsum = calloc(cols, sizeof(double));
        uint64_t step = CHUNK_ELEMS / cols ? CHUNK_ELEMS / cols : 1;
        for (uint64_t r = 0; r < rows; r += step) {
            uint64_t n = rows - r < step ? rows - r : step;
            if (!run_rows(src, r, n, cols, type, NULL, NULL, 0, colsum, n_threads, name)) {
                free(colsum);
                return false;
            }
        }
        fallback = malloc(cols * sizeof(float));
        for (uint64_t c = 0; c < cols; c++) fallback[c] = (float)colsum[c];
        free(colsum);
        imat = fallback;
    }
    uint64_t step = CHUNK_ELEMS / cols ? CHUNK_ELEMS / cols : 1;
    uint8_t *out = malloc((size_t)(step < rows ? step : rows) * row_bytes);
    bool ok = out != NULL;
    for (uint64_t r = 0; ok && r < rows; r += step) {
        if (g_interrupted) {
            log_err("interrupted");
            ok = false;
            break;
        }
        uint64_t n = rows - r < step ? rows - r : step;
        ok = run_rows(src, r, n, cols, type, imat, out, row_bytes, NULL, n_threads, name) &&
             gguf_writer_write_data(w, out, n * row_bytes);
        pg->done += n * cols;
        progress_show(pg, name, false);
    }
    free(out);
    free(fallback);
    return ok;
}

static bool write_tid2eid(gguf_writer *w, const plan_item *it, const ds4_hparams *hp) {
    const st_tensor *r = it->raw;
    uint64_t n = r->n_elems;
    int32_t *out = malloc(n * sizeof(int32_t));
    for (uint64_t i = 0; i < n; i++) {
        int64_t v;
        if (r->dtype == ST_I64) {
            uint64_t u = 0;
            for (int b = 7; b >= 0; b--) u = (u << 8) | r->data[i * 8 + (uint64_t)b];
            v = (int64_t)u;
        } else {
            uint32_t u = 0;
            for (int b = 3; b >= 0; b--) u = (u << 8) | r->data[i * 4 + (uint64_t)b];
            v = (int32_t)u;
        }
        if (v < 0 || v >= hp->n_expert) {
            log_err("%s: entry %llu is expert %lld, outside [0, %u)", r->name, (unsigned long long)i, (long long)v,
                    hp->n_expert);
            free(out);
            return false;
        }
        out[i] = (int32_t)v;
    }
    bool ok = gguf_writer_write_data(w, out, n * sizeof(int32_t));
    free(out);
    return ok;
}

/* The source pages of a converted tensor are not needed again: tell the
 * kernel, so the resident set stays at a chunk's worth on a 160 GB
 * checkpoint instead of growing with the mapped shards. */
static void release_source(const hf_tensor *t) {
    const long page = sysconf(_SC_PAGESIZE);
    const st_tensor *parts[2] = {t->w, t->scale};
    for (int i = 0; i < 2; i++) {
        if (!parts[i] || parts[i]->nbytes == 0) continue;
        uintptr_t a = (uintptr_t)parts[i]->data, b = a + parts[i]->nbytes;
        a = (a + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page; /* whole pages inside the tensor only */
        b = b / (uintptr_t)page * (uintptr_t)page;
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED); /* read-only file mapping: pages are simply dropped */
    }
}

static bool write_item(gguf_writer *w, const plan_item *it, const ds4_hparams *hp, const imatrix *im, int n_threads,
                       progress *pg) {
    const ds4_tensor_spec *s = &it->spec;
    if (s->hf_layout == DS4_HF_TID2EID) {
        bool ok = write_tid2eid(w, it, hp);
        pg->done += it->n_elems;
        return ok;
    }
    const uint64_t rows = s->n_dims >= 2 ? s->ne[1] : 1, cols = s->ne[0];
    for (uint32_t e = 0; e < it->n_src; e++) {
        const float *imat = NULL;
        bool mismatch = false;
        char err[256];
        if (im && (it->type == DS4_TYPE_IQ2_XXS || it->type == DS4_TYPE_Q2_K || it->type == DS4_TYPE_Q4_K)) {
            imat = imatrix_lookup(im, s->name, cols, s->hf_layout == DS4_HF_EXPERT_STACK ? (int)e : -1,
                                  (uint32_t)it->n_src, &mismatch, err, sizeof err);
            if (mismatch) {
                log_err("%s", err);
                return false;
            }
        }
        if (!write_matrix(w, &it->src[e], rows, cols, it->type, imat, n_threads, s->name, pg)) return false;
        release_source(&it->src[e]);
    }
    return true;
}

/* ------------------------------------------------------------------------ */

static void print_summary(const plan_item *items, size_t n, uint64_t total_bytes) {
    uint64_t by_type[DS4_TYPE_COUNT] = {0};
    for (size_t i = 0; i < n; i++) {
        uint64_t b;
        ds4_dtype_nbytes(items[i].type, items[i].n_elems, &b);
        by_type[items[i].type] += b;
    }
    fprintf(stderr, "tensor bytes by type:");
    for (int t = 0; t < DS4_TYPE_COUNT; t++)
        if (by_type[t]) fprintf(stderr, "  %s %.2f MiB", ds4_dtype_name((uint32_t)t), by_type[t] / 1048576.0);
    fprintf(stderr, "  (total %.2f MiB)\n", total_bytes / 1048576.0);
}

int convert_run(const convert_options *opt) {
    char err[512] = {0};
    hf_checkpoint ck;
    if (!hf_checkpoint_open(&ck, opt->hf_dir, err, sizeof err)) {
        log_err("%s", err);
        return 1;
    }
    int rc = 1;
    ds4_hparams *hp = calloc(1, sizeof *hp);
    plan_item *items = NULL;
    size_t n_items = 0;
    imatrix im = {0};
    bool have_im = false;
    char *tmp_path = NULL;
    FILE *fp = NULL;
    gguf_writer *w = NULL;
    if (!hf_checkpoint_hparams(&ck, hp, err, sizeof err)) {
        log_err("%s", err);
        goto done;
    }
    if (opt->imatrix_path) {
        if (!imatrix_load(&im, opt->imatrix_path, err, sizeof err)) {
            log_err("%s", err);
            goto done;
        }
        have_im = true;
        fprintf(stderr, "imatrix: %u entries from %s%s%s\n", im.n_entries, opt->imatrix_path,
                im.dataset ? ", dataset " : "", im.dataset ? im.dataset : "");
    }
    n_items = ds4_schema_tensors(hp, NULL, 0);
    ds4_tensor_spec *specs = calloc(n_items, sizeof *specs);
    ds4_schema_tensors(hp, specs, n_items);
    items = calloc(n_items, sizeof *items);
    size_t n_plan = 0;
    uint64_t total_elems = 0, total_bytes = 0;
    for (size_t i = 0; i < n_items; i++) {
        if (specs[i].optional && !hf_checkpoint_find(&ck, specs[i].hf_name)) continue;
        plan_item *it = &items[n_plan];
        it->spec = specs[i];
        if (!plan_tensor(&ck, hp, opt, it, err, sizeof err)) {
            log_err("%s", err);
            n_items = n_plan + 1;
            free(specs);
            goto done;
        }
        n_plan++;
        uint64_t b = 0;
        ds4_dtype_nbytes(it->type, it->n_elems, &b);
        total_bytes += b;
        total_elems += it->n_elems;
        if (it->type != it->wanted)
            fprintf(stderr, "note: %s: row length %llu is not a multiple of the %s block (%u); using %s\n", it->spec.name,
                    (unsigned long long)it->spec.ne[0], ds4_dtype_name(it->wanted), ds4_dtype_info(it->wanted)->block_elems,
                    ds4_dtype_name(it->type));
    }
    free(specs);
    n_items = n_plan;
    fprintf(stderr, "model: %u layers, width %u, %u heads x %u, %u experts (%u used), vocab %u; recipe %s; %d threads\n",
            hp->n_layer, hp->n_embd, hp->n_head, hp->head_dim, hp->n_expert, hp->n_expert_used, hp->n_vocab,
            convert_recipe_name(opt->recipe), opt->n_threads);
    print_summary(items, n_items, total_bytes);
    if (opt->dry_run) {
        for (size_t i = 0; i < n_items; i++) printf("%-40s %-8s\n", items[i].spec.name, ds4_dtype_name(items[i].type));
        rc = 0;
        goto done;
    }

    w = gguf_writer_new();
    ds4_hparams_to_gguf(hp, w);
    char *dir_copy = strdup(opt->hf_dir);
    size_t dl = strlen(dir_copy);
    while (dl > 1 && dir_copy[dl - 1] == '/') dir_copy[--dl] = 0;
    gguf_writer_set_str(w, "general.name", basename(dir_copy));
    free(dir_copy);
    gguf_writer_set_u32(w, "general.quantization_version", 2);
    gguf_writer_set_str(w, "ds4.quantize.recipe", convert_recipe_name(opt->recipe));
    if (ck.tokenizer_path) {
        if (!hf_tokenizer_to_gguf(ck.tokenizer_path, w, err, sizeof err)) {
            log_err("%s", err);
            goto done;
        }
        fprintf(stderr, "tokenizer: copied from %s\n", ck.tokenizer_path);
    } else {
        fprintf(stderr, "warning: %s has no tokenizer.json: the GGUF will carry no tokenizer "
                        "(usable through token-id interfaces only)\n", opt->hf_dir);
    }
    for (size_t i = 0; i < n_items; i++) {
        const ds4_tensor_spec *s = &items[i].spec;
        gguf_writer_add_tensor(w, s->name, s->n_dims, s->ne, items[i].type);
    }
    if (gguf_writer_error(w)) {
        log_err("%s", gguf_writer_error(w));
        goto done;
    }

    size_t tl = strlen(opt->out_path) + 32;
    tmp_path = malloc(tl);
    snprintf(tmp_path, tl, "%s.tmp.%ld", opt->out_path, (long)getpid());
    fp = fopen(tmp_path, "wb");
    if (!fp) {
        log_err("cannot create %s: %s", tmp_path, strerror(errno));
        goto done;
    }
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    progress pg = {.total = total_elems, .t0 = now_s(), .tty = isatty(2)};
    bool ok = gguf_writer_begin(w, fp);
    for (size_t i = 0; ok && i < n_items; i++)
        ok = write_item(w, &items[i], hp, have_im ? &im : NULL, opt->n_threads, &pg);
    ok = ok && gguf_writer_finish(w);
    if (ok) progress_show(&pg, "all tensors written", true);
    if (!ok && gguf_writer_error(w)) log_err("writing %s: %s", tmp_path, gguf_writer_error(w));
    if (ok && (fflush(fp) != 0 || fsync(fileno(fp)) != 0)) {
        log_err("writing %s: %s", tmp_path, strerror(errno));
        ok = false;
    }
    if (fclose(fp) != 0 && ok) {
        log_err("closing %s: %s", tmp_path, strerror(errno));
        ok = false;
    }
    fp = NULL;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (pg.tty) fprintf(stderr, "\n");
    if (ok) {
        /* the file must read back as a valid DS4 model before it takes the final name */
        gguf_file *check = gguf_open(tmp_path, err, sizeof err);
        if (!check || !ds4_schema_check(check, err, sizeof err)) {
            log_err("self-check of the written file failed: %s", err);
            ok = false;
        }
        gguf_close(check);
    }
    if (ok && rename(tmp_path, opt->out_path) != 0) {
        log_err("cannot rename %s to %s: %s", tmp_path, opt->out_path, strerror(errno));
        ok = false;
    }
    if (!ok) {
        unlink(tmp_path);
        goto done;
    }
    double el = now_s() - pg.t0;
    fprintf(stderr, "wrote %s: %.2f MiB in %.2fs (%.1f M params/s)\n", opt->out_path, total_bytes / 1048576.0, el,
            total_elems / 1e6 / (el > 0 ? el : 1e-9));
    rc = 0;
done:
    if (fp) {
        fclose(fp);
        unlink(tmp_path);
    }
    free(tmp_path);
    gguf_writer_free(w);
    for (size_t i = 0; i < n_items; i++) free(items[i].src);
    free(items);
    if (have_im) imatrix_free(&im);
    free(hp);
    hf_checkpoint_close(&ck);
    return rc;
}
