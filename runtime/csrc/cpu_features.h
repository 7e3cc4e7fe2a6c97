// What this CPU can run, asked of the CPU (cpuid) and of the OS (xgetbv: which register
// states the kernel saves). A flag in /proc/cpuinfo is not enough: AVX-512 needs the OS to
// save the zmm/opmask state, AMX needs a per-process grant (arch_prctl), and a VM may refuse.
#pragma once

namespace mcq {

struct CpuFeatures {
  bool avx2 = false;          // avx2 + fma, ymm state saved by the OS
  bool avx512 = false;        // avx512 f/bw/vl/dq, zmm + opmask state saved
  bool avx512_vnni = false;   // avx512 + vpdpbusd
};

const CpuFeatures& cpu_features();

}  // namespace mcq
