// mcq.attention: a layer's scaled dot-product attention over the KV cache in one call, for the
// chain the planner recognized (runtime/engine/attention.py):
//   scores = Q·Kᵀ as the quantized bmm computes it (Q quantized with spec_q, K's stored integers,
//            int32 sums, the qbmm epilogue with spec_k's parameters), or for a float32 cache (no
//            specs) as the float bmm does (the float32 GEMM over Kᵀ, k in order per output),
//   then * factor (or / factor), + mask, softmax over the keys,
//   out    = P @ dequantize(V) (the float32 GEMM, k in order per output).
// K and V arrive as their parts along the sequence (the past cache and this call's positions:
// no concatenated copy) and a grouped-query head reads its KV head in place (no repeat copy).
// Every value is the unfused program's bit for bit: the integer sums are exact, the float steps
// are the same operations in the same order, and P·V skips only the leading and trailing keys
// whose weight is exactly 0 in every row of a block (0 * a finite v adds nothing to the sum).
//
// args: q [B*H, S, D] float32, k_parts (list of int8 or float32 [B, KV, Li, D]), v_parts (the
// same), mask (broadcast to [B, H, S, L]), spec_q, spec_k, spec_v (spec_v: per index of the B*H
// batch, as the unfused P·V dequantizes; all three None for a float32 cache), rep (H / KV),
// factor, divide
#include <algorithm>
#include <cstring>

#include "activations.h"
#include "ops.h"
#include "quant.h"
#include "thread_pool.h"

namespace mcq {
namespace {

// One of K or V: rows [L, D] per (batch, KV head), found across the parts without copying
struct Cache {
  std::vector<Tensor> parts;
  DType dt = DType::i8;
  int64_t b = 0, kv = 0, len = 0, d = 0;
  std::vector<const char*> rows;  // [b][kv][j] -> row j's D elements

  Cache(const Value& list, const char* what) {
    if (list.kind != Value::Kind::list || list.items.empty()) throw EngineError(std::string(what) + ": expected a list of parts");
    for (const Value& v : list.items) {
      Tensor t = v.tensor(what);
      if (parts.empty()) dt = t.dt;
      if ((t.dt != DType::i8 && t.dt != DType::f32) || t.dt != dt || t.nd != 4)
        throw EngineError(std::string("attention: ") + what + " part " + shape_str(t) + " is not int8 or float32 [B, KV, L, D]");
      if (t.st[3] != 1) t = contiguous(t);
      if (parts.empty()) b = t.sh[0], kv = t.sh[1], d = t.sh[3];
      if (t.sh[0] != b || t.sh[1] != kv || t.sh[3] != d)
        throw EngineError(std::string("attention: ") + what + " parts " + shape_str(parts[0]) + " and " + shape_str(t));
      len += t.sh[2];
      parts.push_back(std::move(t));
    }
    const int64_t es = static_cast<int64_t>(dtype_size(dt));
    rows.resize(static_cast<size_t>(b * kv * len));
    for (int64_t i = 0; i < b; ++i)
      for (int64_t g = 0; g < kv; ++g) {
        const char** r = rows.data() + (i * kv + g) * len;
        for (const Tensor& t : parts)
          for (int64_t j = 0; j < t.sh[2]; ++j) *r++ = t.ptr + (i * t.st[0] + g * t.st[1] + j * t.st[2]) * es;
      }
  }
  const char* const* of(int64_t i, int64_t g) const { return rows.data() + (i * kv + g) * len; }
};

struct Attention {
  const int8_t* qa;  // Q quantized, [B*H, S, D] (int8 cache)
  const float* qf;   // Q as it is, [B*H, S, D] (float32 cache)
  const Cache *k, *v;
  const Tensor* mask;  // f32, broadcast to [B, H, S, L] (zero strides)
  const QuantSpec *sq, *sk, *sv;
  int64_t heads, rep, s, block;
  float factor;
  bool divide;
  std::vector<PackedInt8>* packed;   // per (b, kv head): K packed for the GEMM (prefill), or empty
  std::vector<int32_t>* colsum;      // per (b, kv head, key): sum_d K (the zero-point term)
  std::vector<float>* values;        // per (b, kv head): V dequantized, [L, D]
  std::vector<float>* keys_t;        // per (b, kv head): Kᵀ [D, L] (float32 cache)
  float* out;
};

// the scores of rows [i0, i1) of head bh as qbmm computes them, then the factor and the mask
// factor and mask on rows [i0, i1) of head bh's raw scores, in place
void scale_and_mask(const Attention& a, int64_t bh, int64_t i0, int64_t i1, float* sc) {
  const int64_t len = a.k->len, b = bh / a.heads, h = bh % a.heads;
  const Tensor& m = *a.mask;
  const float f = a.factor;
  for (int64_t r = 0; r < i1 - i0; ++r) {
    const float* mr = m.data<float>() + b * m.st[0] + h * m.st[1] + (i0 + r) * m.st[2];
    const int64_t ms = m.st[3];
    float* o = sc + r * len;
    for (int64_t j = 0; j < len; ++j) {
      const float y = a.divide ? o[j] / f : o[j] * f;
      o[j] = y + mr[j * ms];
    }
  }
}

void scores(const Attention& a, int64_t bh, int64_t i0, int64_t i1, float* sc, std::vector<int32_t>& acc) {
  const int64_t d = a.k->d, len = a.k->len, b = bh / a.heads, h = bh % a.heads, g = h / a.rep, rows = i1 - i0;
  if (a.qf != nullptr) {  // float32 cache: the float bmm's GEMM over Kᵀ
    const float* kt = a.keys_t->data() + (b * a.k->kv + g) * d * len;
    gemm_f32(a.qf + (bh * a.s + i0) * d, d, kt, len, sc, len, rows, len, d, false);
    scale_and_mask(a, bh, i0, i1, sc);
    return;
  }
  const int8_t* q = a.qa + (bh * a.s + i0) * d;
  const int8_t* const* keys = reinterpret_cast<const int8_t* const*>(a.k->of(b, g));
  acc.resize(static_cast<size_t>(rows * len));
  const std::vector<PackedInt8>& packed = *a.packed;
  if (!packed.empty()) {
    gemm_int8(q, rows, d, packed[static_cast<size_t>(b * a.k->kv + g)], acc.data(), len, true);
  } else {  // a decode step: plain dot products over the keys where they lie
    const RowFunctions& fn = row_functions();
    for (int64_t j = 0; j < len; ++j)
      for (int64_t r = 0; r < rows; ++r) acc[static_cast<size_t>(r * len + j)] = fn.dot_i8(q + r * d, keys[j], d);
  }
  const int64_t ia = batch_param(*a.sq, bh), ib = batch_param(*a.sk, bh);
  const int32_t za = a.sq->zero_point[a.sq->zero_point.size() == 1 ? 0 : ia];
  const int32_t zb = a.sk->zero_point[a.sk->zero_point.size() == 1 ? 0 : ib];
  const float scale = a.sq->scale[ia] * a.sk->scale[ib];
  const uint32_t kzz = static_cast<uint32_t>(d) * static_cast<uint32_t>(za) * static_cast<uint32_t>(zb);
  const int32_t* colsum = a.colsum->data() + (b * a.k->kv + g) * len;
  for (int64_t r = 0; r < rows; ++r) {
    int32_t rowsum = 0;
    for (int64_t kk = 0; kk < d; ++kk) rowsum += q[r * d + kk];
    const uint32_t row_term = static_cast<uint32_t>(zb) * static_cast<uint32_t>(rowsum);
    float* o = sc + r * len;
    const int32_t* ar = acc.data() + r * len;
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t v = static_cast<uint32_t>(ar[j]) - row_term - static_cast<uint32_t>(za) * static_cast<uint32_t>(colsum[j]) + kzz;
      o[j] = static_cast<float>(static_cast<int32_t>(v)) * scale;
    }
  }
  scale_and_mask(a, bh, i0, i1, sc);
}

void block_task(void* ctx, int64_t task) {
  const Attention& a = *static_cast<const Attention*>(ctx);
  const int64_t blocks = (a.s + a.block - 1) / a.block;
  const int64_t bh = task / blocks, i0 = (task % blocks) * a.block, i1 = std::min(a.s, i0 + a.block);
  const int64_t len = a.k->len, d = a.k->d, b = bh / a.heads, g = (bh % a.heads) / a.rep;
  thread_local std::vector<float> sc;
  thread_local std::vector<int32_t> acc;
  sc.resize(static_cast<size_t>((i1 - i0) * len));
  scores(a, bh, i0, i1, sc.data(), acc);
  const RowFunctions& fn = row_functions();
  int64_t k0 = len, k1 = 0;  // the keys some row weighs
  for (int64_t r = 0; r < i1 - i0; ++r) {
    float* p = sc.data() + r * len;
    softmax_row(fn, p, p, len);
    int64_t first = 0, last = len;
    while (first < len && p[first] == 0.0f) ++first;
    while (last > first && p[last - 1] == 0.0f) --last;
    if (first < last) k0 = std::min(k0, first), k1 = std::max(k1, last);
  }
  float* out = a.out + (bh * a.s + i0) * d;
  if (k1 <= k0) {
    std::fill(out, out + (i1 - i0) * d, 0.0f);
    return;
  }
  const float* vals = a.values->data() + (b * a.k->kv + g) * len * d;
  gemm_f32(sc.data() + k0, len, vals + k0 * d, d, out, d, i1 - i0, d, k1 - k0, false);
}

// per (batch, KV head): V dequantized with the batch's parameters (those of its first query
// head: the same for all heads of the group, checked) or copied as it is (float32), and K's key
// sums and packed form where S > 2 (int8) or Kᵀ (float32)
void prepare_group(const Attention& a, int64_t index) {
  const int64_t b = index / a.k->kv, g = index % a.k->kv, len = a.k->len, d = a.k->d;
  float* vals = a.values->data() + index * len * d;
  const char* const* vr = a.v->of(b, g);
  const char* const* kr = a.k->of(b, g);
  if (a.qf != nullptr) {
    for (int64_t j = 0; j < len; ++j) std::memcpy(vals + j * d, vr[j], static_cast<size_t>(d) * sizeof(float));
    float* kt = a.keys_t->data() + index * d * len;
    for (int64_t j = 0; j < len; ++j) {
      const float* key = reinterpret_cast<const float*>(kr[j]);
      for (int64_t kk = 0; kk < d; ++kk) kt[kk * len + j] = key[kk];
    }
    return;
  }
  const int64_t first = b * a.heads + g * a.rep;
  const int64_t ip = batch_param(*a.sv, first);
  const int32_t zp = a.sv->zero_point[a.sv->zero_point.size() == 1 ? 0 : ip];
  const float scale = a.sv->scale[ip];
  const RowFunctions& fn = row_functions();
  for (int64_t j = 0; j < len; ++j) fn.dequantize_i8(reinterpret_cast<const int8_t*>(vr[j]), vals + j * d, d, zp, scale);
  int32_t* colsum = a.colsum->data() + index * len;
  thread_local std::vector<int8_t> ones;
  ones.assign(static_cast<size_t>(d), 1);
  for (int64_t j = 0; j < len; ++j) colsum[j] = fn.dot_i8(reinterpret_cast<const int8_t*>(kr[j]), ones.data(), d);
  if (!a.packed->empty()) {
    thread_local std::vector<int8_t> rows;
    rows.resize(static_cast<size_t>(len * d));
    for (int64_t j = 0; j < len; ++j) std::memcpy(rows.data() + j * d, kr[j], static_cast<size_t>(d));
    (*a.packed)[static_cast<size_t>(index)] = pack_int8(rows.data(), len, d, d, 1, true);
  }
}

Value op_attention(Args& args) {
  const Tensor& q0 = args[0].tensor("attention q");
  const Cache k(args[1], "attention k"), v(args[2], "attention v");
  const bool floats = k.dt == DType::f32;  // a float32 cache: no specs
  const QuantSpec* sq = floats ? nullptr : &object<QuantSpec>(args[4], "attention");
  const QuantSpec* sk = floats ? nullptr : &object<QuantSpec>(args[5], "attention");
  const QuantSpec* sv = floats ? nullptr : &object<QuantSpec>(args[6], "attention");
  const int64_t rep = args[7].integer("attention rep");
  const double factor = args[8].real("attention factor");
  const bool divide = args[9].integer("attention divide") != 0;
  if (q0.dt != DType::f32 || q0.nd != 3) throw EngineError("attention: q " + shape_str(q0) + " is not float32 [B*H, S, D]");
  if (rep < 1 || k.b != v.b || k.kv != v.kv || k.len != v.len || k.d != v.d || k.dt != v.dt ||
      q0.sh[0] != k.b * k.kv * rep || q0.sh[2] != k.d)
    throw EngineError("attention: q " + shape_str(q0) + " for K " + shape_str(k.parts[0]) + " and V " + shape_str(v.parts[0]) +
                      " with " + std::to_string(rep) + " query heads per KV head");
  const int64_t heads = k.kv * rep, s = q0.sh[1], len = k.len, d = k.d;
  // the mask as the unfused add reads it: float32, broadcast to [B, H, S, L]
  const Tensor& m0 = args[3].tensor("attention mask");
  if (m0.dt == DType::f64) throw EngineError("attention: a float64 mask");
  const std::vector<int64_t> full = {k.b, heads, s, len};
  if (broadcast_shapes(m0.shape(), full) != full) throw EngineError("attention: mask " + shape_str(m0) + " for scores of [B, H, S, L]");
  const Tensor mask = expand_to(m0.dt == DType::f32 ? m0 : to_dtype(m0, DType::f32), full);
  if (!floats) {
    if (!((sq->per_tensor() || sq->axis == 0) && (sk->per_tensor() || sk->axis == 0) && (sv->per_tensor() || sv->axis == 0)) ||
        sq->storage != DType::i8)
      throw EngineError("attention: operands quantized per tensor or per batch only");
    for (int64_t b = 0; b < k.b; ++b)  // the heads of a group share their V parameters (one dequantized copy)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t i = batch_param(*sv, b * heads + h), f = batch_param(*sv, b * heads + (h / rep) * rep);
        const int32_t zi = sv->zero_point[sv->zero_point.size() == 1 ? 0 : i];
        const int32_t zf = sv->zero_point[sv->zero_point.size() == 1 ? 0 : f];
        if (sv->scale[i] != sv->scale[f] || zi != zf) throw EngineError("attention: V parameters differ within a group of heads");
      }
  }
  const Tensor qa = floats ? Tensor{} : quantize(q0, *sq);
  const Tensor qf = floats ? contiguous(q0) : Tensor{};
  Tensor out = empty(DType::f32, {q0.sh[0], s, d});
  const int64_t groups = k.b * k.kv;
  std::vector<PackedInt8> packed(!floats && s > 2 ? static_cast<size_t>(groups) : 0);
  // scratch kept from call to call (a decode step would otherwise fault in fresh pages for V)
  thread_local std::vector<int32_t> colsum;
  thread_local std::vector<float> values, keys_t;
  colsum.resize(floats ? 0 : static_cast<size_t>(groups * len));
  values.resize(static_cast<size_t>(groups * len * d));
  keys_t.resize(floats ? static_cast<size_t>(groups * len * d) : 0);
  Attention a{floats ? nullptr : qa.data<int8_t>(), floats ? qf.data<float>() : nullptr, &k, &v, &mask, sq, sk, sv,
              heads, rep, s, 32, static_cast<float>(factor), divide, &packed, &colsum, &values, &keys_t,
              out.data<float>()};
  if (s <= a.block) {
    // one block of rows per head (a decode step): each group's task prepares it and runs its
    // heads, one pool call in all
    pool().run(groups, [](void* ctx, int64_t i) {
      const Attention& at = *static_cast<const Attention*>(ctx);
      prepare_group(at, i);
      const int64_t first = (i / at.k->kv) * at.heads + (i % at.k->kv) * at.rep;
      for (int64_t h = first; h < first + at.rep; ++h) block_task(ctx, h);
    }, &a);
  } else {
    pool().run(groups, [](void* ctx, int64_t i) { prepare_group(*static_cast<const Attention*>(ctx), i); }, &a);
    pool().run(q0.sh[0] * ((s + a.block - 1) / a.block), block_task, &a);
  }
  return Value::Of(out);
}

}  // namespace

void add_attention_ops(OpTable& t) { t.insert(t.end(), {{"mcq.attention", op_attention}}); }

}  // namespace mcq
