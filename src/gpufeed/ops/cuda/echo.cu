GPUFEED_OP(gpufeed_op_echo) {
  (void)params;
  const uint32_t n = in.len <= out.cap ? in.len : out.cap;
  // 16-byte aligned payload areas: copy 4-byte words, then the tail bytes.
  const uint32_t words = n / 4;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(in.payload);
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.out);
  for (uint32_t i = lane; i < words; i += lanes) dst[i] = src[i];
  for (uint32_t i = words * 4 + lane; i < n; i += lanes) out.out[i] = in.payload[i];
  if (lane == 0) {
    *out.out_len = n;
    *out.status = in.len <= out.cap ? gpufeed::STATUS_OK : gpufeed::STATUS_ERROR;
  }
}
