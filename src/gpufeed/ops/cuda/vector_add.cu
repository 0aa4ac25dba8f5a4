GPUFEED_OP(gpufeed_op_vector_add) {
  (void)params;
  const uint32_t k = in.len / 8;  // floats per vector
  const float* a = reinterpret_cast<const float*>(in.payload);
  const float* b = a + k;
  float* sum = reinterpret_cast<float*>(out.out);
  const bool fits = 4 * k <= out.cap && in.len % 8 == 0;
  if (fits) {
    for (uint32_t i = lane; i < k; i += lanes) sum[i] = a[i] + b[i];
  }
  if (lane == 0) {
    *out.out_len = fits ? 4 * k : 0;
    *out.status = fits ? gpufeed::STATUS_OK : gpufeed::STATUS_ERROR;
  }
}
