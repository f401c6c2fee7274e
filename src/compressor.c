/* compressor.c - compressor windows and indexer top-k (see compressor.h). */
#include "compressor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bool ds4_compressor_step(uint32_t ratio, uint32_t dim, float *st_kv, float *st_sc, const float *kv, const float *score,
                         int64_t pos, float *pooled) {
    const uint32_t c = ratio == 4 ? 2 : 1, W = c * dim;
    const uint32_t slot = (uint32_t)(pos % ratio);
    const uint32_t row = c == 2 ? ratio + slot : slot;
    memcpy(st_kv + (size_t)row * W, kv, W * sizeof(float));
    memcpy(st_sc + (size_t)row * W, score, W * sizeof(float));
    if ((pos + 1) % ratio != 0) return false;
    for (uint32_t j = 0; j < dim; j++) {
        /* candidates: (score, value) pairs for output dim j */
        float m = -INFINITY;
        for (uint32_t r = 0; r < ratio; r++) {
            if (c == 2) m = fmaxf(m, st_sc[(size_t)r * W + j]);
            m = fmaxf(m, st_sc[(size_t)(row - slot + r) * W + (c - 1) * dim + j]);
        }
        if (m == -INFINITY) {
            pooled[j] = 0;
            continue;
        }
        double num = 0, den = 0;
        for (uint32_t r = 0; r < ratio; r++) {
            if (c == 2) {
                double e = exp((double)st_sc[(size_t)r * W + j] - m);
                num += e * st_kv[(size_t)r * W + j];
                den += e;
            }
            size_t at = (size_t)(row - slot + r) * W + (c - 1) * dim + j;
            double e = exp((double)st_sc[at] - m);
            num += e * st_kv[at];
            den += e;
        }
        pooled[j] = (float)(num / den);
    }
    if (c == 2) { /* the closed window becomes the previous one */
        memcpy(st_kv, st_kv + (size_t)ratio * W, (size_t)ratio * W * sizeof(float));
        memcpy(st_sc, st_sc + (size_t)ratio * W, (size_t)ratio * W * sizeof(float));
    }
    return true;
}

typedef struct {
    float score;
    uint32_t index;
} scored;

/* "a ranks before b": higher score, then lower index */
static int ranks_before(const scored *a, const scored *b) {
    return a->score > b->score || (a->score == b->score && a->index < b->index);
}

static int cmp_index(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

uint32_t ds4_topk_select(const float *scores, uint32_t n, uint32_t k, uint32_t *sel) {
    if (n <= k) {
        for (uint32_t i = 0; i < n; i++) sel[i] = i;
        return n;
    }
    /* min-heap (by rank) of the best k seen so far: root is the worst kept */
    scored *heap = malloc((size_t)k * sizeof *heap);
    for (uint32_t i = 0; i < n; i++) {
        scored s = {scores[i], i};
        if (i < k) {
            uint32_t at = i;
            heap[at] = s;
            while (at > 0) {
                uint32_t up = (at - 1) / 2;
                if (!ranks_before(&heap[up], &heap[at])) break;
                scored t = heap[up]; heap[up] = heap[at]; heap[at] = t;
                at = up;
            }
        } else if (ranks_before(&s, &heap[0])) {
            heap[0] = s;
            uint32_t at = 0;
            for (;;) {
                uint32_t l = 2 * at + 1, r = l + 1, worst = at;
                if (l < k && ranks_before(&heap[worst], &heap[l])) worst = l;
                if (r < k && ranks_before(&heap[worst], &heap[r])) worst = r;
                if (worst == at) break;
                scored t = heap[worst]; heap[worst] = heap[at]; heap[at] = t;
                at = worst;
            }
        }
    }
    for (uint32_t i = 0; i < k; i++) sel[i] = heap[i].index;
    free(heap);
    qsort(sel, k, sizeof *sel, cmp_index);
    return k;
}
