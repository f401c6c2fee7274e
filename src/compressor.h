/* compressor.h - DS4's KV compressors (attention and indexer flavours) and
 * the Lightning indexer's top-k selection.
 *
 * A compressor of ratio R turns every closed window of R tokens into one row:
 * per output dim j, a softmax over the window's gate scores (projected gate +
 * learned position bias `ape`) weights the window's projected values. Ratio 4
 * is "overlapping": each token projects 2*dim values, lane 0 feeding the NEXT
 * window and lane 1 the current one, so a row pools 8 candidates (previous
 * window lane 0 + current window lane 1). The frontier state holds the open
 * window (see engine.h for its layout).
 */
#ifndef DS4_COMPRESSOR_H
#define DS4_COMPRESSOR_H

#include <stdbool.h>
#include <stdint.h>

/* Feeds one token at absolute position pos. kv, score: [c*dim] for this token
 * (score already includes ape[pos % ratio]). Returns true when the token
 * closes a window; the pooled (pre-norm) row is then in pooled[dim]. */
bool ds4_compressor_step(uint32_t ratio, uint32_t dim, float *st_kv, float *st_sc, const float *kv, const float *score,
                         int64_t pos, float *pooled);

/* Indexer top-k: the k highest scores among scores[0..n) (ties: lower index
 * first), written to sel in ascending index order. Returns the count (k, or n
 * when n <= k). */
uint32_t ds4_topk_select(const float *scores, uint32_t n, uint32_t k, uint32_t *sel);

#endif
