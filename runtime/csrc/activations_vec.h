// The row functions of activations.h written once over an ISA's vector traits T (V, W and
// the few intrinsics they use); included by activations_avx2.cpp and activations_avx512.cpp
// inside their target pragmas, so each compiles for its own instruction set.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mcq {
namespace {

template <class T, class V = typename T::V>
inline V vexp(V x) {
  const V hi = T::set1(88.0f), lo = T::set1(-87.3365478515625f);
  const V under = x;  // below lo: exactly 0
  x = T::min(x, hi);
  x = T::max(x, lo);
  const V n = T::round(T::mul(x, T::set1(1.44269504088896341f)));
  V r = T::fnmadd(n, T::set1(0.693359375f), x);
  r = T::fnmadd(n, T::set1(-2.12194440e-4f), r);
  V p = T::set1(1.9875691500e-4f);
  p = T::fmadd(p, r, T::set1(1.3981999507e-3f));
  p = T::fmadd(p, r, T::set1(8.3334519073e-3f));
  p = T::fmadd(p, r, T::set1(4.1665795894e-2f));
  p = T::fmadd(p, r, T::set1(1.6666665459e-1f));
  p = T::fmadd(p, r, T::set1(5.0000001201e-1f));
  p = T::fmadd(p, T::mul(r, r), T::add(r, T::set1(1.0f)));
  const V scaled = T::scale_by_pow2(p, n);
  return T::zero_below(scaled, under, lo);
}

template <class T, class F>
inline void map_rows(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + T::W <= n; i += T::W) T::storeu(y + i, f(T::loadu(x + i)));
  if (i < n) {
    alignas(64) float in[T::W] = {0}, out[T::W];
    std::memcpy(in, x + i, static_cast<size_t>(n - i) * sizeof(float));
    T::storeu(out, f(T::loadu(in)));
    std::memcpy(y + i, out, static_cast<size_t>(n - i) * sizeof(float));
  }
}

template <class T>
float exp_shifted_sum(const float* x, float* y, int64_t n, float shift) {
  using V = typename T::V;
  const V s = T::set1(shift);
  V acc = T::setzero();
  int64_t i = 0;
  for (; i + T::W <= n; i += T::W) {
    const V e = vexp<T>(T::sub(T::loadu(x + i), s));
    T::storeu(y + i, e);
    acc = T::add(acc, e);
  }
  alignas(64) float lanes[T::W];
  T::storeu(lanes, acc);
  float total = 0.0f;
  for (int j = 0; j < T::W; ++j) total += lanes[j];
  for (; i < n; ++i) total += y[i] = std::exp(x[i] - shift);
  return total;
}

template <class T>
void sigmoid(const float* x, float* y, int64_t n) {
  using V = typename T::V;
  const V one = T::set1(1.0f);
  map_rows<T>(x, y, n, [&](V v) { return T::div(one, T::add(one, vexp<T>(T::sub(T::setzero(), v)))); });
}

template <class T>
void silu(const float* x, float* y, int64_t n) {
  using V = typename T::V;
  const V one = T::set1(1.0f);
  map_rows<T>(x, y, n, [&](V v) { return T::div(v, T::add(one, vexp<T>(T::sub(T::setzero(), v)))); });
}

template <class T>
void quantize_i8(const float* x, const float* smooth, uint8_t* q, int64_t n, float scale, float zp, float lo, float hi,
                 uint8_t flip) {
  using V = typename T::V;
  const V s = T::set1(scale), z = T::set1(zp), vlo = T::set1(lo), vhi = T::set1(hi);
  const auto one = [&](const float* xi, const float* si, uint8_t* qi) {
    V v = T::loadu(xi);
    if (si != nullptr) v = T::div(v, T::loadu(si));
    const V t = T::div(v, s);
    const V g = T::add(T::trunc(T::add(t, T::copysign_half(t))), z);
    T::store_bytes(qi, T::clamp_nan_zero(g, vlo, vhi), flip);
  };
  int64_t i = 0;
  for (; i + T::W <= n; i += T::W) one(x + i, smooth ? smooth + i : nullptr, q + i);
  if (i < n) {
    alignas(64) float in[T::W] = {0}, sm[T::W];
    alignas(64) uint8_t out[T::W];
    for (int j = 0; j < T::W; ++j) sm[j] = 1.0f;
    const size_t rest = static_cast<size_t>(n - i);
    std::memcpy(in, x + i, rest * sizeof(float));
    if (smooth) std::memcpy(sm, smooth + i, rest * sizeof(float));
    one(in, smooth ? sm : nullptr, out);
    std::memcpy(q + i, out, rest);
  }
}

}  // namespace
}  // namespace mcq
