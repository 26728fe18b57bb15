/* shmkv/_core_src/hash.c: xxh3_64, the one hash of the extension (keys, with seed ^ collection;
 * entry checksums, with the region's seed; the module's xxh3_64()), from the vendored
 * single-file xxHash.
 *
 * XXH_INLINE_ALL makes every xxHash function static to the file that includes it, so that no
 * XXH symbol is exported and no xxhash.c is built; included in each file that hashes, it would
 * also compile XXH3 once per file (about 6 KB more code). It is included here only, and every
 * file calls xxh3_64() below: one out-of-line copy, as when the extension was one file. */
#include "core.h"

#define XXH_INLINE_ALL
#include "../_vendor/xxhash.h"

_Static_assert(sizeof(XXH64_hash_t) == sizeof(uint64_t), "XXH64_hash_t is a u64");

uint64_t
xxh3_64(const void *data, size_t len, uint64_t seed)
{
    return XXH3_64bits_withSeed(data, len, seed);
}

const char xxh_version[] = Py_STRINGIFY(XXH_VERSION_MAJOR) "." Py_STRINGIFY(XXH_VERSION_MINOR)
                           "." Py_STRINGIFY(XXH_VERSION_RELEASE);
