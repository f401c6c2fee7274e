/* safetensors.c - mmap reader for .safetensors shards (see safetensors.h). */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const struct { const char *name; st_dtype t; uint32_t size; } dtypes[] = {
    {"F32", ST_F32, 4},        {"F16", ST_F16, 2},        {"BF16", ST_BF16, 2}, {"F8_E4M3", ST_F8_E4M3, 1},
    {"F8_E8M0", ST_F8_E8M0, 1}, {"I8", ST_I8, 1},          {"U8", ST_U8, 1},     {"I32", ST_I32, 4},
    {"I64", ST_I64, 8},        {"F64", ST_F64, 8},
};

uint32_t st_dtype_size(st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

bool st_open(st_file *f, const char *path, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 8) {
        set_err(err, errlen, "%s: too small to be a safetensors file (%lld bytes)", path, (long long)st.st_size);
        close(fd);
        return false;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        set_err(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        return false;
    }
    f->map = m;
    f->size = (uint64_t)st.st_size;
    f->path = strdup(path);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen > f->size - 8 || hlen > (1ull << 30)) {
        set_err(err, errlen, "%s: header length %llu exceeds the file (%llu bytes): truncated or not safetensors", path,
                (unsigned long long)hlen, (unsigned long long)f->size);
        st_close(f);
        return false;
    }
    cJSON *root = cJSON_ParseWithLength((const char *)f->map + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        set_err(err, errlen, "%s: header is not a JSON object", path);
        cJSON_Delete(root);
        st_close(f);
        return false;
    }
    const uint64_t data_start = 8 + hlen, data_size = f->size - data_start;
    size_t cap = (size_t)cJSON_GetArraySize(root);
    f->tensors = calloc(cap ? cap : 1, sizeof(st_tensor));
    bool ok = f->tensors != NULL;
    for (cJSON *it = root->child; ok && it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) continue;
        st_tensor *t = &f->tensors[f->n_tensors];
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
            cJSON_GetArraySize(shape) > 8) {
            set_err(err, errlen, "%s: tensor '%s' has a malformed header entry", path, it->string);
            ok = false;
            break;
        }
        t->name = strdup(it->string);
        f->n_tensors++;
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt->valuestring);
        t->dtype = ST_UNKNOWN;
        for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
            if (strcmp(dtypes[i].name, dt->valuestring) == 0) t->dtype = dtypes[i].t;
        t->n_elems = 1;
        for (cJSON *d = shape->child; d; d = d->next) {
            if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9.007199254740992e15) {
                set_err(err, errlen, "%s: tensor '%s' has an invalid shape", path, t->name);
                ok = false;
                break;
            }
            t->shape[t->n_dims++] = (uint64_t)d->valuedouble;
            t->n_elems *= (uint64_t)d->valuedouble;
        }
        if (!ok) break;
        double b = cJSON_GetArrayItem(offs, 0)->valuedouble, e = cJSON_GetArrayItem(offs, 1)->valuedouble;
        if (b < 0 || e < b || e > 1.8e19) {
            set_err(err, errlen, "%s: tensor '%s' has invalid data_offsets", path, t->name);
            ok = false;
            break;
        }
        uint64_t begin = (uint64_t)b, end = (uint64_t)e;
        if (end > data_size) {
            set_err(err, errlen, "%s: tensor '%s' data [%llu, %llu) runs past the end of the shard (%llu data bytes): truncated file",
                    path, t->name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
            ok = false;
            break;
        }
        uint32_t es = st_dtype_size(t->dtype);
        if (es && t->n_elems * es != end - begin) {
            set_err(err, errlen, "%s: tensor '%s' is %llu bytes but %s x %llu elements needs %llu", path, t->name,
                    (unsigned long long)(end - begin), t->dtype_name, (unsigned long long)t->n_elems,
                    (unsigned long long)(t->n_elems * es));
            ok = false;
            break;
        }
        t->data = f->map + data_start + begin;
        t->nbytes = end - begin;
    }
    cJSON_Delete(root);
    if (!ok) {
        st_close(f);
        return false;
    }
    qsort(f->tensors, f->n_tensors, sizeof(st_tensor), cmp_tensor);
    return true;
}

void st_close(st_file *f) {
    for (size_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->map) munmap((void *)f->map, (size_t)f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}
