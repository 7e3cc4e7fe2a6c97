#include "program.h"

#include <chrono>
#include <unordered_map>

namespace mcq {

OpFn find_op(const std::string& name) {
  static const std::unordered_map<std::string, OpFn> index = [] {
    std::unordered_map<std::string, OpFn> m;
    for (const auto& [n, fn] : op_table()) m.emplace(n, fn);
    return m;
  }();
  const auto it = index.find(name);
  return it == index.end() ? nullptr : it->second;
}

namespace {

Value evaluate(const Arg& a, const std::vector<Value>& slots) {
  switch (a.kind) {
    case Arg::Kind::slot: return slots[static_cast<size_t>(a.slot)];
    case Arg::Kind::list: {
      std::vector<Value> items;
      items.reserve(a.items.size());
      for (const Arg& x : a.items) items.push_back(evaluate(x, slots));
      return Value::List(std::move(items));
    }
    default: return a.constant;
  }
}

}  // namespace

std::vector<Value> Program::run(std::vector<Value> in) const {
  if (in.size() != inputs.size())
    throw EngineError("program takes " + std::to_string(inputs.size()) + " inputs, got " + std::to_string(in.size()));
  std::vector<Value> values(static_cast<size_t>(slots));
  for (size_t i = 0; i < in.size(); ++i) values[static_cast<size_t>(inputs[i])] = std::move(in[i]);
  Args args;
  if (profiling) seconds.resize(code.size(), 0.0);
  for (size_t i = 0; i < code.size(); ++i) {
    const Instruction& ins = code[i];
    const auto start = profiling ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    args.clear();
    for (const Arg& a : ins.args) args.push_back(evaluate(a, values));
    try {
      if (ins.outs.empty()) {
        values[static_cast<size_t>(ins.out)] = ins.fn(args);
      } else {
        Value result = ins.fn(args);
        if (result.kind != Value::Kind::list || result.items.size() != ins.outs.size())
          throw EngineError("an op of " + std::to_string(ins.outs.size()) + " outputs returned another number");
        for (size_t k = 0; k < ins.outs.size(); ++k) values[static_cast<size_t>(ins.outs[k])] = std::move(result.items[k]);
      }
    } catch (const EngineError& e) {
      throw EngineError("node " + ins.node + ": " + e.what());
    }
    if (profiling) seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (int r : ins.release) values[static_cast<size_t>(r)] = Value();
  }
  std::vector<Value> out;
  out.reserve(outputs.size());
  for (int o : outputs) out.push_back(values[static_cast<size_t>(o)]);
  return out;
}

}  // namespace mcq
