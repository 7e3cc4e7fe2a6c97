// A graph as the engine runs it: a straight-line list of op calls over numbered value slots,
// made once at load by the planner (runtime/engine/plan.py) and run in one native call per
// entry-point call. Slots are released after their last use, so memory follows the graph's
// live values, not its length.
#pragma once

#include <string>
#include <vector>

#include "ops.h"

namespace mcq {

struct Arg {
  enum class Kind : uint8_t { slot, constant, list };
  Kind kind = Kind::constant;
  int slot = -1;
  Value constant;
  std::vector<Arg> items;
};

struct Instruction {
  OpFn fn = nullptr;
  std::string op;    // the op's name
  std::string node;  // the graph node's name, for errors
  std::vector<Arg> args;
  int out = -1;
  std::vector<int> outs;     // several outputs (the op returns a list): its items go to these slots
  std::vector<int> release;  // slots whose last use this is
};

struct Program {
  int slots = 0;
  std::vector<int> inputs, outputs;
  std::vector<Instruction> code;
  bool profiling = false;
  mutable std::vector<double> seconds;  // per instruction, summed over runs while profiling

  std::vector<Value> run(std::vector<Value> in) const;
};

OpFn find_op(const std::string& name);  // nullptr if the engine has no such op

}  // namespace mcq
