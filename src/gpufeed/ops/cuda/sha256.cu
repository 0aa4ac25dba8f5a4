// SHA-256 (FIPS 180-4). Hashing is sequential per message, so lane 0 does
// the work and the other lanes of the warp idle; throughput comes from many
// warps (messages) in flight, not from lanes.
namespace gpufeed_sha256 {

__constant__ uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

__device__ __forceinline__ uint32_t rotr(uint32_t x, uint32_t n) { return (x >> n) | (x << (32 - n)); }

// Byte `i` of the padded message: payload, then 0x80, zeros, 64-bit big-endian bit length.
__device__ __forceinline__ uint8_t padded_byte(const uint8_t* p, uint32_t len, uint64_t total,
                                               uint64_t i) {
  if (i < len) return p[i];
  if (i == len) return 0x80;
  if (i >= total - 8) return static_cast<uint8_t>((uint64_t(len) * 8) >> (8 * (total - 1 - i)));
  return 0;
}

__device__ void compress(uint32_t state[8], const uint8_t* p, uint32_t len, uint64_t total,
                         uint64_t block) {
  uint32_t w[64];
  for (int t = 0; t < 16; ++t) {
    const uint64_t at = block * 64 + 4 * t;
    w[t] = (uint32_t(padded_byte(p, len, total, at)) << 24) |
           (uint32_t(padded_byte(p, len, total, at + 1)) << 16) |
           (uint32_t(padded_byte(p, len, total, at + 2)) << 8) |
           uint32_t(padded_byte(p, len, total, at + 3));
  }
  for (int t = 16; t < 64; ++t) {
    const uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    const uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
  for (int t = 0; t < 64; ++t) {
    const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
    const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  state[0] += a; state[1] += b; state[2] += c; state[3] += d;
  state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

}  // namespace gpufeed_sha256

GPUFEED_OP(gpufeed_op_sha256) {
  (void)params;
  (void)lanes;
  if (lane != 0) return;
  if (out.cap < 32) {
    *out.out_len = 0;
    *out.status = gpufeed::STATUS_ERROR;
    return;
  }
  uint32_t state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const uint64_t blocks = (uint64_t(in.len) + 9 + 63) / 64;
  for (uint64_t blk = 0; blk < blocks; ++blk)
    gpufeed_sha256::compress(state, in.payload, in.len, blocks * 64, blk);
  for (int i = 0; i < 8; ++i) {
    out.out[4 * i] = static_cast<uint8_t>(state[i] >> 24);
    out.out[4 * i + 1] = static_cast<uint8_t>(state[i] >> 16);
    out.out[4 * i + 2] = static_cast<uint8_t>(state[i] >> 8);
    out.out[4 * i + 3] = static_cast<uint8_t>(state[i]);
  }
  *out.out_len = 32;
  *out.status = gpufeed::STATUS_OK;
}
