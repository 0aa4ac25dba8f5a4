// relu(W x + b): W is (out_dim, in_dim) row-major float32, b is (out_dim).
// Each lane computes whole output features; a warp covers out_dim in strides.
GPUFEED_OP(gpufeed_op_dense) {
  const float* w = static_cast<const float*>(params.tensors[0]);
  const float* b = static_cast<const float*>(params.tensors[1]);
  const uint32_t in_dim = params.dims[0];
  const uint32_t out_dim = params.dims[1];
  const float* x = reinterpret_cast<const float*>(in.payload);
  float* y = reinterpret_cast<float*>(out.out);
  const bool fits = in.len == 4 * in_dim && 4 * out_dim <= out.cap;
  if (fits) {
    for (uint32_t o = lane; o < out_dim; o += lanes) {
      float acc = b[o];
      const float* row = w + static_cast<uint64_t>(o) * in_dim;
      for (uint32_t i = 0; i < in_dim; ++i) acc = fmaf(row[i], x[i], acc);
      y[o] = acc > 0.0f ? acc : 0.0f;
    }
  }
  if (lane == 0) {
    *out.out_len = fits ? 4 * out_dim : 0;
    *out.status = fits ? gpufeed::STATUS_OK : gpufeed::STATUS_ERROR;
  }
}
